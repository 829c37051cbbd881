"""Text from users, shown as text: the one way pages put a name (a dataset, set, category, list, recipe, tag,
file, job title, OCR reading, an error naming one of them) into anything Streamlit renders as Markdown.

Streamlit renders Markdown in `st.markdown`, `st.caption`, `st.success`/`info`/`warning`/`error`, `st.toast`,
every widget label, `st.metric` labels, expander and tab labels, button labels, image captions, progress and
spinner texts. A category named `![t](http://host/x.png)` would make every teammate's browser fetch that URL,
and `[Sign in again](http://host/)` would be a link in the app's own voice (red-team finding R8). `md`
escapes what builds links, images, HTML, autolinks, math and Streamlit's `:color[...]` directives, and
leaves ordinary names (`REAL_set`, `ViT-B-32/openai`, `cats, dogs`) exactly as they are. Plotly labels take
a few HTML tags, `<a href>` among them: `plot_text` escapes those.
"""

from __future__ import annotations

import html
import re

# Backslash escapes are CommonMark's own: every ASCII punctuation character may be escaped, and then renders
# as itself. These are the ones that open a construct: links and images ([ ]), HTML and autolinks (< >), math
# ($), strikethrough (~), emphasis (*), headings (#), tables (|), and the escape itself (\). Backticks are left:
# a code span only shows text more literally (and messages quote `commands` with them).
_SPECIAL = re.compile(r"([\\\[\]<>$~*#|])")
# GFM turns bare URLs, www. names and e-mail addresses into links: an escape inside each breaks the pattern.
_AUTOLINK = re.compile(r"(?i)(?<=[a-z])(:)(?=//)|(?<=\bwww)(\.)|(@)")


def md(text: object) -> str:
    """`text` for any place that renders Markdown: shown as the characters it holds, never as a link, image,
    HTML or formatting. One line (line breaks become spaces)."""
    value = " ".join(str(text).splitlines())
    value = _SPECIAL.sub(r"\\\1", value)
    return _AUTOLINK.sub(lambda m: "\\" + m.group(0), value)


def code(text: object) -> str:
    """`text` as an inline code span, shown exactly as it is (paths, keys, readings): the fence is longer than
    any run of backticks inside, so the text can never close it."""
    value = " ".join(str(text).splitlines())
    longest = max((len(run) for run in re.findall(r"`+", value)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") or not value.strip() else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def plot_text(text: object) -> str:
    """`text` for a plotly title, axis, legend or hover label: its tags (`<a href>`, `<b>`) shown as text."""
    return html.escape(str(text), quote=False)
