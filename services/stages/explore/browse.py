"""Browse a dataset's images, several datasets' or the whole catalog's, as one paged grid, filtered and sorted
on what the catalog knows about them.

One parameterised query over `dataset_members` (the datasets' images in input order) joined with `images`;
each filter adds a condition with bound values, never text pasted into the SQL: folder tags (any of), file
formats, a smallest width and height, a byte range, a part of the name, a quality flag, a classifier score at
least a value for one model, the keep/drop choice on near-duplicates, a Gemini or CLIP zero-shot category, a
word in the Gemini description, the OCR reading (valid or not, a part of the code). Stage results count under any
of their settings (any model, list version or recipe), as quality flags do. Sorts are a fixed list of named
orders. A page reads `limit` rows at `offset`; the total is counted by the same conditions.

Over several datasets (named, of some kinds, or every one) each image is shown once, under the first of them
(in catalog order) that holds it (under a name that passes the name filter); a folder tag counts when any of
them gives it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

from services.core.catalog import SCORE_BINS
from services.core.datasets import dataset_id_of
from services.core.errors import WorkbenchError
from services.core.workspace import Workspace
from services.stages.describe.categorize_clip import CLIP_STAGE
from services.stages.describe.stage import CATEGORIZE_STAGE, DESCRIBE_STAGE
from services.stages.ocr.stage import OCR_STAGE

SORTS: dict[str, str] = {  # name -> ORDER BY (fixed text: never from the request)
    "input order": "m.seq",
    "name": "m.file_name, m.seq",
    "largest file": "i.bytes DESC, m.seq",
    "smallest file": "i.bytes, m.seq",
    "most pixels": "i.width * i.height DESC, m.seq",
    "fewest pixels": "i.width * i.height, m.seq",
    "highest score": "score DESC, m.seq",
    "lowest score": "score, m.seq",
}
MAX_PAGE = 500
ORDERED_SCAN_OFFSET = 10_000  # pages in input order up to this offset read the order index and stop early
MAX_CATEGORY_CHOICES = 1000
MAX_NAME_CHARS = 200


class BrowseError(WorkbenchError):
    """A filter or sort that cannot be applied as asked."""

    http_status = 422


@dataclass(frozen=True)
class BrowseFilter:
    datasets: tuple[str, ...] = ()  # these datasets (none named: every dataset, the whole catalog)
    kinds: tuple[str, ...] = ()  # only the datasets of these kinds (REAL, GEN, train, test, view...)
    tags: tuple[str, ...] = ()  # any of these folder tags
    formats: tuple[str, ...] = ()  # any of these (PIL names: JPEG, PNG...)
    min_width: int = 0
    min_height: int = 0
    min_bytes: int = 0
    max_bytes: int | None = None
    name_contains: str = ""
    flag: str | None = None  # a quality flag the image carries (any quality version)
    score_model: str | None = None  # a classifier (model_sha): its score is shown and sortable
    min_score: float | None = None  # with score_model: at least this score
    choice: Literal["any", "kept", "dropped"] = "any"  # "kept": not chosen to drop
    category: str | None = None  # a category Gemini gave the image (any model or list version)
    clip_category: str | None = None  # a category CLIP zero-shot gave it
    description_contains: str = ""  # a part of any text in Gemini's description of it
    ocr: Literal["any", "read", "valid", "invalid"] = "any"  # read: OCR ran and found a code; valid: it checked
    ocr_code_contains: str = ""  # a part of the code OCR read
    sort: str = "input order"

    @property
    def one_dataset(self) -> str | None:
        """The dataset when the filter names exactly one and no kinds, else None (several, or the catalog)."""
        return self.datasets[0] if len(self.datasets) == 1 and not self.kinds else None


@dataclass(frozen=True)
class BrowseRow:
    image_hash: str
    name: str
    dataset: str  # the dataset it is shown under (the first chosen that holds it)
    path: str | None
    format: str
    bytes: int
    width: int
    height: int
    score: float | None


@dataclass(frozen=True)
class _Query:
    """One filter's SQL: its conditions (values in `args`), the score join (values in `join_args`), the order;
    `chosen`: the datasets chosen, `scope`: those read, `scope_conditions`: how many conditions only choose
    the rows (the datasets, each image once)."""

    where: list[str]
    args: list[object]
    join_score: str
    join_args: list[object]
    score: str
    order: str
    chosen: list[int]
    scope: list[int]
    scope_conditions: int

    @property
    def filters(self) -> int:
        """How many conditions filter (beyond choosing the rows)."""
        return len(self.where) - self.scope_conditions

    def in_input_order(self) -> _Query:
        """The query with its "image IN (a subquery)" terms kept off the members' indexes (SQLite's unary "+"),
        so a page in input order walks the order index and stops after its rows, instead of the planner (no
        statistics) driving from a tag or flag list and sorting every match: a first page at a million images
        0.06-0.16 s instead of 0.5-3.5 s. Deep pages keep the planner's choice (a walk to a far offset reads
        more rows than a sort)."""
        marked = [("+" + w) if w.startswith("m.image_hash IN (") else w for w in self.where]
        return replace(self, where=marked)

    @property
    def conditions(self) -> str:
        return " AND ".join(self.where)

    @property
    def base(self) -> str:
        return (
            f"FROM dataset_members m JOIN images i ON i.hash = m.image_hash {self.join_score} WHERE {self.conditions}"
        )


def browse(ws: Workspace, f: BrowseFilter, offset: int = 0, limit: int = 24) -> tuple[list[BrowseRow], int]:
    """One page of the datasets' images that pass the filter, in the chosen order, and how many pass."""
    return browse_page(ws, f, offset, limit), browse_count(ws, f)


def browse_count(ws: Workspace, f: BrowseFilter) -> int:
    """How many of the datasets' images pass the filter (each image once)."""
    return _count(ws, f, _query(ws, f))


def browse_page(ws: Workspace, f: BrowseFilter, offset: int = 0, limit: int = 24) -> list[BrowseRow]:
    """One page of the images that pass, in the chosen order."""
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise BrowseError(f"a page is 1 to {MAX_PAGE} images from offset 0 or more")
    q = _query(ws, f)
    if f.sort == "input order" and offset <= ORDERED_SCAN_OFFSET:
        q = q.in_input_order()
    rows = ws.catalog.query(
        f"""SELECT m.image_hash, m.name, i.path, i.format, i.bytes, i.width, i.height, {q.score} AS score,
                   m.dataset_id {q.base} ORDER BY {q.order} LIMIT ? OFFSET ?""",
        (*q.join_args, *q.args, limit, offset),
    )
    names = {int(r[0]): str(r[1]) for r in ws.catalog.query("SELECT id, name FROM datasets")}
    return [
        BrowseRow(
            r[0],
            r[1],
            names.get(int(r[8]), "?"),
            r[2],
            r[3],
            int(r[4]),
            int(r[5]),
            int(r[6]),
            None if r[7] is None else float(r[7]),
        )  # fmt: skip
        for r in rows
    ]


def matching_hashes(ws: Workspace, f: BrowseFilter, limit: int) -> list[str]:
    """Every image passing the filter (at most `limit`), in the chosen order: a selection to save."""
    q = _query(ws, f)
    rows = ws.catalog.query(
        f"SELECT m.image_hash, {q.score} AS score {q.base} ORDER BY {q.order} LIMIT ?", (*q.join_args, *q.args, limit)
    )
    return [str(r[0]) for r in rows]


def describe_filter(f: BrowseFilter) -> str:
    """The filter in words ("tags cats, dogs; formats PNG; sorted by name"), for a saved view's source."""
    parts = [] if f.datasets or f.kinds else ["every dataset"]
    for field in fields(f):
        value = getattr(f, field.name)
        if field.name == "sort" or (field.name == "datasets" and len(value) == 1):  # one: the view's source
            continue
        if value == field.default or value in ((), ""):
            continue
        shown = ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        parts.append(f"{field.name.replace('_', ' ')} {shown}")
    if f.sort != "input order":
        parts.append(f"sorted by {f.sort}")
    return "; ".join(parts) or "every image"


def _query(ws: Workspace, f: BrowseFilter, chosen: list[int] | None = None, part: int | None = None) -> _Query:
    """The filter's query over the datasets chosen (`chosen`: their ids, else resolved here), each image once
    under the first holding it; with `part`, only the images of that dataset no earlier chosen one holds (the
    count is taken a dataset at a time: the first by its counters, the others by what they add)."""
    if f.sort not in SORTS:
        raise BrowseError(f"sort {f.sort!r}: use one of {', '.join(SORTS)}")
    if "score" in f.sort and f.score_model is None:
        raise BrowseError("sorting by score needs a classifier chosen")
    if f.choice not in ("any", "kept", "dropped") or f.ocr not in ("any", "read", "valid", "invalid"):
        raise BrowseError("a near-duplicate choice is any, kept or dropped; an OCR reading any, read, valid or invalid")
    for what, text in (("name", f.name_contains), ("description", f.description_contains),
                       ("OCR code", f.ocr_code_contains)):  # fmt: skip
        if len(text) > MAX_NAME_CHARS:
            raise BrowseError(f"a {what} filter has at most {MAX_NAME_CHARS} characters")
    chosen = chosen if chosen is not None else chosen_dataset_ids(ws, f.datasets, f.kinds)
    scope = chosen if part is None else [part]
    in_ids, id_args = _ids_sql(scope)
    where, args = [f"m.dataset_id {in_ids}"], list[object](id_args)
    earlier = chosen if part is None else chosen[: chosen.index(part)]
    if len(earlier) > 1 or (part is not None and earlier):  # each image once: under the first chosen dataset
        named = "AND instr(lower(o.name), lower(?)) > 0" if f.name_contains else ""  # holding it under a name
        held_before = f"""EXISTS (SELECT 1 FROM dataset_members o WHERE o.image_hash = m.image_hash  -- that passes
                          AND o.dataset_id {_ids_sql(earlier)[0]} AND o.dataset_id < m.dataset_id {named})"""
        where.append(f"NOT {held_before}" if part is not None else f"(m.dataset_id = ? OR NOT {held_before})")
        args += [*([] if part is not None else [chosen[0]]), *earlier, *([f.name_contains] if f.name_contains else [])]
    scope_conditions = len(where)
    if f.tags:  # the tag index read once (a range per dataset and tag), not one lookup a member
        tag_ids, tag_id_args = _ids_sql(chosen)  # a tag any chosen dataset gives the image
        where.append(
            f"""m.image_hash IN (SELECT t.image_hash FROM dataset_member_tags t WHERE t.dataset_id {tag_ids}
                AND t.tag IN ({",".join("?" * len(f.tags))}))"""
        )
        args += [*tag_id_args, *f.tags]
    if f.formats:
        where.append(f"i.format IN ({','.join('?' * len(f.formats))})")
        args += f.formats
    for column, value in (("i.width", f.min_width), ("i.height", f.min_height), ("i.bytes", f.min_bytes)):
        if value:
            where.append(f"{column} >= ?")
            args.append(int(value))
    if f.max_bytes is not None:
        where.append("i.bytes <= ?")
        args.append(int(f.max_bytes))
    if f.name_contains:
        where.append("instr(lower(m.name), lower(?)) > 0")
        args.append(f.name_contains)
    if f.flag:
        where.append("m.image_hash IN (SELECT image_hash FROM image_flags WHERE flag = ?)")  # one scan, not one a row
        args.append(f.flag)
    if f.choice != "any":
        dropped = """(SELECT c.image_hash FROM duplicate_choices c WHERE c.choice = 'drop'
                       AND c.id = (SELECT MAX(id) FROM duplicate_choices WHERE image_hash = c.image_hash))"""
        where.append(f"m.image_hash {'IN' if f.choice == 'dropped' else 'NOT IN'} {dropped}")
    where_results, result_args = _stage_result_conditions(f)
    where += where_results
    args += result_args
    score, join_score, join_args = "NULL", "", list[object]()
    if f.score_model is not None:  # an inner join when a score is asked for or sorted by (the classifier's
        kind = "JOIN" if f.min_score is not None or "score" in f.sort else "LEFT JOIN"  # scored images only)
        score, join_score, join_args = (
            "s.score",
            f"{kind} tag_scores s ON s.image_hash = m.image_hash AND s.model_sha = ?",
            [f.score_model],
        )
        if f.min_score is not None:
            where.append("s.score >= ?")
            args.append(float(f.min_score))
    order = SORTS[f.sort] if len(scope) == 1 else SORTS[f.sort].replace("m.seq", "m.dataset_id, m.seq")
    return _Query(where, args, join_score, join_args, score, order, chosen, scope, scope_conditions)


def chosen_dataset_ids(ws: Workspace, datasets: Sequence[str], kinds: Sequence[str] = ()) -> list[int]:
    """The ids of the datasets named (an unknown name is an error listing the datasets), or of every dataset when
    none is named, narrowed to the kinds given; in catalog order (the order a grid of several shows them in)."""
    datasets = (datasets,) if isinstance(datasets, str) else datasets  # one name, not its letters
    ids = sorted({dataset_id_of(ws.catalog, name) for name in datasets})
    if not ids or kinds:
        marks = ",".join("?" * len(kinds))
        in_kinds = f"WHERE kind IN ({marks})" if kinds else ""
        of_kinds = [
            int(r[0]) for r in ws.catalog.query(f"SELECT id FROM datasets {in_kinds} ORDER BY id", tuple(kinds))
        ]
        ids = [i for i in ids if i in set(of_kinds)] if ids else of_kinds
        if not ids and kinds:
            chosen = f"of the datasets {', '.join(datasets)} " if datasets else ""
            raise BrowseError(f"no dataset {chosen}is of kind {' or '.join(kinds)}")
        if not ids:
            raise BrowseError("no dataset in this workspace yet: download or import images first")
    return ids


def _ids_sql(ids: list[int]) -> tuple[str, tuple[object, ...]]:
    """The text "IN (?, ...)" and its values for these dataset ids ("IN ()" matches nothing)."""
    return f"IN ({','.join('?' * len(ids))})", tuple(ids)


def _count(ws: Workspace, f: BrowseFilter, q: _Query) -> int:
    """How many pass. Over several datasets, a dataset at a time: the first chosen counted as if alone, each
    later one by the images it adds (those no earlier one holds)."""
    if len(q.chosen) > 1:
        first = _count_part(ws, f, _query(ws, f, q.chosen, q.chosen[0]), several=True)
        return first + sum(_count_part(ws, f, _query(ws, f, q.chosen, k)) for k in q.chosen[1:])
    return _count_part(ws, f, q)


def _count_part(ws: Workspace, f: BrowseFilter, q: _Query, several: bool = False) -> int:
    """How many of one dataset's rows pass: from its counter when nothing filters, from the format, tag or term
    counters when one of those is the only filter (a tag only when the dataset is read alone: over several, any
    of them may give it), from the score counters when a score threshold on a bin edge is the only condition,
    else by the query (images joined only when a filter reads them)."""
    dataset_id = q.scope[0]
    alone = q.scope_conditions == 1  # no "held by an earlier dataset" condition
    if alone and q.filters == 0 and not q.join_score.startswith("JOIN"):
        return int(ws.catalog.scalar("SELECT n_images FROM datasets WHERE id = ?", (dataset_id,)))
    if alone and (counter := _lone_counter(f, tags=not several)) is not None:
        sql, values = counter
        return int(ws.catalog.scalar(sql, (dataset_id, *values)))
    if alone and (bins := _score_bins_from(f, q.filters)) is not None:
        return int(ws.catalog.scalar(
            "SELECT COALESCE(SUM(images), 0) FROM dataset_score_bins WHERE dataset_id = ? AND model_sha = ? "
            "AND bin >= ?", (dataset_id, f.score_model, bins)))  # fmt: skip
    images_join = "JOIN images i ON i.hash = m.image_hash" if any(c.startswith("i.") for c in q.where) else ""
    return int(ws.catalog.scalar(f"SELECT COUNT(*) FROM dataset_members m {images_join} {q.join_score} WHERE "
                                 f"{q.conditions}", (*q.join_args, *q.args)))  # fmt: skip


def _lone_counter(f: BrowseFilter, tags: bool = True) -> tuple[str, tuple[object, ...]] | None:
    """The counter query (its values after the dataset id) that answers exactly when the filter's only condition
    is formats (an image has one format), one folder tag, or one category or OCR state; else None."""
    if f.formats and _only(f, "formats"):
        marks = ",".join("?" * len(f.formats))
        sql = f"SELECT COALESCE(SUM(images), 0) FROM dataset_format_counts WHERE dataset_id = ? AND format IN ({marks})"
        return sql, tuple(f.formats)
    if tags and len(f.tags) == 1 and _only(f, "tags"):
        return "SELECT COALESCE(SUM(images), 0) FROM dataset_tag_counts WHERE dataset_id = ? AND tag = ?", f.tags
    if (term := _lone_term(f)) is not None and _only(f, "category", "clip_category", "ocr"):
        sql = "SELECT COALESCE(SUM(images), 0) FROM dataset_term_counts WHERE dataset_id = ? AND stage = ? AND term = ?"
        return sql, term
    return None


def _only(f: BrowseFilter, *names: str) -> bool:
    """Whether no filter but these fields (besides the dataset and the sort) is set."""
    return all(
        getattr(f, x.name) == x.default for x in fields(f) if x.name not in ("datasets", "kinds", "sort", *names)
    )


def _lone_term(f: BrowseFilter) -> tuple[str, str] | None:
    """The (stage, term) a filter asks for when a category or an OCR state is its one result condition."""
    terms = [
        (CATEGORIZE_STAGE, f.category),
        (CLIP_STAGE, f.clip_category),
        (OCR_STAGE, f.ocr if f.ocr != "any" else None),
    ]
    asked = [(stage, term) for stage, term in terms if term]
    return asked[0] if len(asked) == 1 else None


def _stage_result_conditions(f: BrowseFilter) -> tuple[list[str], list[object]]:
    """Conditions on the stages' results, read from the terms and texts the catalog keeps as results are written
    (`result_terms`, `result_texts`: one index range each, no JSON parsed per change)."""
    where: list[str] = []
    args: list[object] = []
    terms = [(CATEGORIZE_STAGE, f.category), (CLIP_STAGE, f.clip_category)]
    terms += [(OCR_STAGE, f.ocr)] if f.ocr != "any" else []
    for stage, term in terms:
        if term:  # a seek per member read (the terms' key leads with stage, term, image): a page stops early
            where.append(
                "EXISTS (SELECT 1 FROM result_terms t WHERE t.stage = ? AND t.term = ? AND t.image_hash = m.image_hash)"
            )
            args += [stage, term]
    for stage, part in ((DESCRIBE_STAGE, f.description_contains), (OCR_STAGE, f.ocr_code_contains)):
        if part:  # the texts are kept lowercased
            where.append(
                "m.image_hash IN (SELECT image_hash FROM result_texts WHERE stage = ? AND instr(text, lower(?)) > 0)"
            )
            args += [stage, part]
    return where, args


def categories_of(ws: Workspace, stage: str) -> list[str]:
    """The categories a stage (Gemini's or CLIP's) gave any image, for the filter's choices."""
    return _distinct(ws, "result_terms", "term", "stage = ?", (stage,))[:MAX_CATEGORY_CHOICES]


def _distinct(ws: Workspace, table: str, column: str, where: str = "1", values: tuple[object, ...] = ()) -> list[str]:
    """The distinct values of an indexed column, one index seek each (a skip over the index), not a scan of the
    rows. `table`, `column` and `where` are this module's fixed text, never a request's."""
    rows = ws.catalog.query(
        f"""WITH RECURSIVE found(value) AS (
               SELECT MIN({column}) FROM {table} WHERE {where}
               UNION ALL SELECT (SELECT MIN({column}) FROM {table} WHERE {where} AND {column} > found.value)
               FROM found WHERE found.value IS NOT NULL LIMIT {MAX_CATEGORY_CHOICES + 1})
           SELECT value FROM found WHERE value IS NOT NULL""",
        (*values, *values),
    )
    return [str(r[0]) for r in rows]


def stages_run(ws: Workspace, datasets: Sequence[str], kinds: Sequence[str] = ()) -> set[str]:
    """The stages with a result for any of the datasets' images (from the stage counters)."""
    in_ids, id_args = _ids_sql(chosen_dataset_ids(ws, datasets, kinds))
    rows = ws.catalog.query(
        f"""SELECT DISTINCT stage FROM dataset_stage_counts WHERE {f"dataset_id {in_ids} AND" if in_ids else ""}
            status = 'ok' AND images > 0""",
        id_args,
    )
    return {str(r[0]) for r in rows}


def _score_bins_from(f: BrowseFilter, conditions: int) -> int | None:
    """The first fine score bin whose images are exactly those passing the filter, when a classifier's score is
    its only condition and the threshold falls on a bin edge (the bins: k / 1000 <= score < (k + 1) / 1000,
    kept by the catalog for Classify); else None."""
    if f.score_model is None or conditions != (0 if f.min_score is None else 1):
        return None
    if f.min_score is None:
        return 0 if "score" in f.sort else None  # sorted by score: every scored image
    k = round(f.min_score * SCORE_BINS)
    return k if 1 <= k < SCORE_BINS and abs(k - f.min_score * SCORE_BINS) < 1e-6 else None


def tags_of(ws: Workspace, datasets: Sequence[str], kinds: Sequence[str] = ()) -> list[str]:
    """The folder tags the datasets' images carry (from the tag counters); none for datasets without tags (a URL
    list, a mixed saved view)."""
    in_ids, id_args = _ids_sql(chosen_dataset_ids(ws, datasets, kinds))
    rows = ws.catalog.query(
        f"SELECT DISTINCT tag FROM dataset_tag_counts WHERE {f'dataset_id {in_ids} AND' if in_ids else ''} images > 0 "
        "ORDER BY tag",
        id_args,
    )
    return [str(r[0]) for r in rows]


def formats_of(ws: Workspace) -> list[str]:
    """The file formats the catalog's images come in, for the filter's choices (a skip over `images_format`,
    not a pass over a dataset's images)."""
    return _distinct(ws, "images", "format")


def classifiers_of(ws: Workspace, datasets: Sequence[str], kinds: Sequence[str] = ()) -> dict[str, str]:
    """The classifiers that scored the datasets' images: model_sha -> "model (tag)" (from the score counters)."""
    in_ids, id_args = _ids_sql(chosen_dataset_ids(ws, datasets, kinds))
    rows = ws.catalog.query(
        f"""SELECT DISTINCT b.model_sha, (SELECT s.model FROM tag_scores s WHERE s.model_sha = b.model_sha LIMIT 1)
            FROM dataset_score_bins b WHERE {f"b.dataset_id {in_ids} AND" if in_ids else ""} b.images > 0""",
        id_args,
    )
    return {r[0]: f"{r[1]} ({r[0][:8]})" for r in rows if r[1]}


def flags_of(ws: Workspace, datasets: Sequence[str], kinds: Sequence[str] = ()) -> list[str]:
    """The quality flags the datasets' images carry (from the flag counters)."""
    in_ids, id_args = _ids_sql(chosen_dataset_ids(ws, datasets, kinds))
    rows = ws.catalog.query(
        f"""SELECT DISTINCT flag FROM dataset_flag_counts WHERE {f"dataset_id {in_ids} AND" if in_ids else ""}
            images > 0 ORDER BY flag""",
        id_args,
    )
    return [r[0] for r in rows]
