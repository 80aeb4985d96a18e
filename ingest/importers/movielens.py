"""MovieLens (ml-latest-small and friends): every rating is one implicit event.

* `ratings.csv` (`userId,movieId,rating,timestamp`, header) -> behavior "click",
  event_time from the Unix seconds; ratings below `min_rating` are dropped if given.
* `movies.csv` (`movieId,title,genres`): category_id = the movie's first genre
  ("Adventure|Animation|..." -> "Adventure"); "(no genres listed)", and movies
  missing from movies.csv, give a null category. brand_id is always null.

Rows are ordered by (user, time, item), users numerically when all ids are numbers.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ingest.importers.common import (
    ReadStats,
    drop_below,
    numbers,
    raw_table,
    read_csv_table,
    report_stats,
    unix_seconds,
)

NO_GENRE = "(no genres listed)"


def first_genres(movies_csv: Path | str, stats: ReadStats | None = None) -> pa.Table:
    """movieId -> first genre (null for NO_GENRE)."""
    stats = stats if stats is not None else ReadStats()
    movies = read_csv_table(movies_csv, ["movieId", "genres"], stats, header=True)
    first = pc.list_element(pc.split_pattern(movies.column("genres"), "|"), 0)
    first = pc.if_else(pc.equal(first, NO_GENRE), pa.scalar(None, pa.string()), first)
    return pa.table({"movieId": movies.column("movieId"), "genre": first})


def read_movielens(ratings_csv: Path | str, movies_csv: Path | str, *,
                   min_rating: float | None = None,
                   stats: ReadStats | None = None) -> pa.Table:
    """All ratings as RAW_EVENTS data rows (see the module docstring)."""
    stats = stats if stats is not None else ReadStats()
    genres = first_genres(movies_csv, stats)
    ratings = read_csv_table(ratings_csv, ["userId", "movieId", "rating", "timestamp"], stats,
                             header=True)
    ratings = drop_below(ratings, numbers(ratings.column("rating")), min_rating, stats)
    at = pc.index_in(ratings.column("movieId"), value_set=genres.column("movieId"))
    table = raw_table(ratings.column("userId"), ratings.column("movieId"),
                      unix_seconds(ratings.column("timestamp"), stats),
                      category_id=genres.column("genre").take(at))
    table = sort_by_user_time(table)
    stats.rows += table.num_rows
    report_stats(str(ratings_csv), stats)
    return table


def sort_by_user_time(table: pa.Table) -> pa.Table:
    """Order rows by (user, event_time, item); numeric user ids sort as numbers."""
    users = table.column("user_id")
    digits = pc.fill_null(pc.match_substring_regex(users, r"^\d{1,18}$"), False)
    if pc.all(digits).as_py():
        table = table.append_column("_user", pc.cast(users, pa.int64()))
        keys = [("_user", "ascending")]
    else:
        keys = [("user_id", "ascending")]
    keys += [("event_time", "ascending"), ("item_id", "ascending")]
    return table.sort_by(keys).select(table.column_names[:6])
