"""The SSRF matrix of the red team (all held): URL forms and redirect Locations aimed at a recording listener on
127.0.0.1, through the product's fetcher with only 127.0.0.2 allowed. Prints the outcome classes and the
listener's hit count (0 expected).

    python tests/security/redteam_scripts/ssrf_matrix.py
"""

from __future__ import annotations

from collections import Counter

from services.core.settings import DownloadSettings
from services.io.http_fetch import FetchError, HttpFetcher
from tests.support.recording_server import pair_on_one_port

secret, allowed = pair_on_one_port()
S, A = secret.port, allowed.port
urls = [
    f"http://127.0.0.1:{S}/", f"http://127.0.0.1.:{S}/", f"http://localhost:{S}/", f"http://localhost.:{S}/",
    f"http://LOCALHOST:{S}/", f"HTTP://127.0.0.1:{S}/", f"http://0.0.0.0:{S}/", f"http://0:{S}/", f"http://[::]:{S}/",
    f"http://[::1]:{S}/", f"http://[::ffff:7f00:1]:{S}/", f"http://[0:0:0:0:0:ffff:127.0.0.1]:{S}/",
    f"http://[fe80::1%25lo]:{S}/", f"http://[::ffff:127.0.0.1%25lo]:{S}/", f"http://0177.0.0.1:{S}/",
    f"http://017700000001:{S}/", f"http://127.000.000.001:{S}/", f"http://0x7f000001:{S}/", f"http://127.0.0.1:0{S}/",
    f"http://127.0.0.1:+{S}/", f"http://①②⑦.0.0.1:{S}/", f"http://１２７.０.０.１:{S}/", f"http://127。0。0。1:{S}/",
    f"http://localhost%00.example.com:{S}/", f"http:/\\127.0.0.1:{S}/", f"http:\\\\127.0.0.1:{S}/",
    f"http:127.0.0.1:{S}/", f"http:/127.0.0.1:{S}/", f"http:///127.0.0.1:{S}/", f"//127.0.0.1:{S}/",
    f"http://127.0.0.1:{S}#@127.0.0.2:{A}/", f"http://127.0.0.1:{S}?@127.0.0.2:{A}/", f"http://127.0.0.2:{A}:{S}/",
    f"http://[127.0.0.1]:{S}/", f"http://127.0.0.1\u2024:{S}/", f"http://loca\u0131host:{S}/", f"http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ:{S}/",
    f"http://localhost\u200b:{S}/", f"http://127.0.0.2:{A}/\t@127.0.0.1:{S}", "http://" + "a" * 300 + f":{S}/",
    f"http://127.0.0.1:{S}/\n", f"http://[::127.0.0.1]:{S}/", f"http://[64:ff9b::127.0.0.1]:{S}/",
    f"http://127.0.0.2:{A}\\\\127.0.0.1:{S}/", f"gopher://127.0.0.1:{S}/", "file:///etc/passwd",
    f"ftp://127.0.0.1:{S}/", f"http://127.1.1.1:{S}/", f"http://[0::1]:{S}/", f"http://[::1].:{S}/",
    "http://169.254.169.254/latest/", f"http://[fd00::1]:{S}/", f"https://127.0.0.1:{S}/",
]  # fmt: skip
locations = [
    f"http://[::ffff:127.0.0.1]:{S}/img/x.png", f"//127.0.0.1:{S}/img/x.png", f"/\\127.0.0.1:{S}/img/x.png",
    f"http://localhost:{S}/img/x.png", f"http:127.0.0.1:{S}/img/x.png", f"HTTP://127.0.0.1:{S}/img/x.png",
    f"\thttp://127.0.0.1:{S}/img/x.png", f"http://127.0.0.1:{S}/img/x.png\r\n", f"\\\\127.0.0.1:{S}/img/x.png",
    f"http://127.0.0.2:{A}@127.0.0.1:{S}/img/x.png", f"//127.0.0.1%3A{S}/img/x.png", f"//[::1]:{S}/img/x.png",
    f"//0x7f.1:{S}/img/x.png", f"http://127.0.0.1:{S}\x00/img/x.png",
]  # fmt: skip
fetcher = HttpFetcher(DownloadSettings(allowed_networks=["127.0.0.2/32"], max_retries=0, connect_timeout=1))
outcomes: Counter[str] = Counter()
for url in urls + [allowed.redirect(f"r{i}", loc) for i, loc in enumerate(locations)]:
    try:
        fetcher.fetch(url)
        outcomes["fetched"] += 1
        print("FETCHED", url)
    except FetchError as exc:
        outcomes[exc.error_class] += 1
print(dict(outcomes), "; hits on the secret listener:", len(secret.requests))
secret.stop()
allowed.stop()
