"""Dashboard pages through Streamlit's AppTest: Home, Download (upload, path, S3 analysis), the running job."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pytest
from streamlit.testing.v1 import AppTest

from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from tests.conftest import ROOT, write_csv
from tests.support.image_server import ImageServer, make_jpeg

APP = str(ROOT / "app.py")
HEADER = ["image_link", "group_id", "entity_name", "entity_value"]


@pytest.fixture
def ws_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "page-ws"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    return root


def app_test() -> AppTest:
    return AppTest.from_file(APP, default_timeout=60)


def wait_done(root: Path, job_id: int, timeout: float = 60) -> str:
    ws = Workspace(root)
    try:
        return JobManager(ws).wait(job_id, timeout=timeout).state
    finally:
        ws.close()


def test_home_on_an_empty_workspace(ws_root: Path) -> None:
    at = app_test().run()
    assert not at.exception
    assert [m.label for m in at.metric] == ["Images", "Stored", "Datasets", "Jobs"]
    assert at.metric[0].value == "0"
    assert any("No datasets yet" in i.value for i in at.info)
    assert any(str(ws_root) in c.value for c in at.sidebar.caption)


def test_download_page_upload_start_and_see_results(ws_root: Path, image_server: ImageServer) -> None:
    urls = [image_server.add(f"u{i}.jpg", make_jpeg(40, 30, seed=i)) for i in range(3)]
    body = "\n".join([",".join(HEADER)] + [f"{u},{i},item_weight,{i} gram" for i, u in enumerate(urls)])
    at = app_test().run()
    at.switch_page("app_pages/download.py").run()
    assert not at.exception
    at.file_uploader(key="urls-upload").upload("train.csv", body.encode(), "text/csv").run()
    assert not at.exception
    assert at.dataframe[0].value.shape == (3, 4)
    assert at.selectbox[0].value == "image_link"
    at.number_input[0].set_value(32)
    at.button[0].click().run()  # the form's submit button
    assert not at.exception, at.exception
    assert wait_done(ws_root, 1) == "completed"
    at.run()
    assert any("`completed`" in m.value for m in at.markdown)
    assert [m.value for m in at.metric[:3]] == ["3", "0", "3"]
    assert any("Labelled CSV" in b.label for b in at.get("download_button"))
    saved = list((ws_root / "uploads").glob("*_train.csv"))
    assert len(saved) == 1


def test_download_page_refuses_a_csv_without_urls_and_names_uploads_as_uploaded(ws_root: Path) -> None:
    """Issue 15: a CSV without a URL column is refused with its columns listed (no form, no job); the upload is
    shown under its own name, never the stored one with its file-id prefix."""
    at = app_test().run()
    at.switch_page("app_pages/download.py").run()
    body = "title,entity_value\nitem one,1 gram\nitem two,2 gram\n"
    at.file_uploader(key="urls-upload").upload("products.csv", body.encode(), "text/csv").run()
    assert not at.exception
    assert any("has no column of image URLs" in e.value and "`title`, `entity_value`" in e.value for e in at.error)
    assert not [b for b in at.button if b.label == "Start download"]
    shown = " ".join(c.value for c in at.caption) + " ".join(e.value for e in at.error)
    assert "`products.csv`" in shown
    stored = next((ws_root / "uploads").glob("*_products.csv")).name
    assert stored != "products.csv" and stored not in shown


def test_download_page_follows_the_new_job_and_says_when_every_item_failed(
    ws_root: Path, image_server: ImageServer
) -> None:
    """Issue 15: after a second "Start download" the panel showed the previous job; a job whose every row
    failed showed a green `completed`."""
    good = image_server.add("g.jpg", make_jpeg(40, 30, seed=1))
    at = app_test().run()
    at.switch_page("app_pages/download.py").run()
    at.file_uploader(key="urls-upload").upload("one.csv", f"image_link\n{good}\n".encode(), "text/csv").run()
    at.button[0].click().run()
    assert wait_done(ws_root, 1) == "completed"
    at.run()
    assert at.selectbox(key="job-pick").value == 1
    bad = "\n".join(["image_link"] + [image_server.url(f"/status/404?{i}") for i in range(3)])
    at.file_uploader(key="urls-upload").upload("bad.csv", bad.encode(), "text/csv").run()
    at.text_input[0].input("bad").run()  # the dataset name
    [b for b in at.button if b.label == "Start download"][0].click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="job-pick").value == 2  # the panel follows the job just started
    assert wait_done(ws_root, 2) == "completed"
    at.run()
    panel = [m.value for m in at.markdown if m.value.startswith("**Job 2**")]
    assert panel and "`completed: every item failed`" in panel[0] and ":material/error:" in panel[0], panel
    assert any("All 3 items failed" in w.value for w in at.warning)
    assert "(bad.csv)" in panel[0]


def test_download_page_reports_bad_column(ws_root: Path, tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "odd.csv", ["link", "x"], [["http://127.0.0.1:9/a.jpg", "1"]])
    at = app_test().run()
    at.switch_page("app_pages/download.py").run()
    at.radio(key="urls-how").set_value("Path on the server").run()
    at.text_input(key="urls-path").input(str(csv_path)).run()
    assert at.selectbox[0].value == "link"  # a column named like a URL is preselected
    at.text_input(key="urls-path").input(str(tmp_path / "missing.csv")).run()
    assert any("No file at" in e.value for e in at.error)


def test_s3_tab_analyses_before_downloading(ws_root: Path, s3_endpoint: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="pagebucket")
    s3.put_object(Bucket="pagebucket", Key="GEN/one.jpg", Body=make_jpeg(20, 20, seed=1))
    csv_path = write_csv(tmp_path / "GEN_t.csv", None, [["one"], ["two.jpg"]])
    at = app_test().run()
    at.switch_page("app_pages/download.py").run()
    at.radio(key="s3-how").set_value("Path on the server").run()
    at.text_input(key="s3-path").input(str(csv_path)).run()
    at.text_input(key="s3-bucket").input("pagebucket").run()
    at.text_input(key="s3-prefix").input("GEN/").run()
    at.text_input(key="s3-endpoint").input(s3_endpoint).run()
    at.button(key="s3-analyse").click().run()
    assert not at.exception
    values = {m.label: m.value for m in at.metric}
    assert (values["Available"], values["Missing"], values["Ambiguous"]) == ("1", "1", "0")
    assert not list((ws_root / "images").rglob("*.jpg"))  # nothing downloaded before confirmation
    at.button(key="s3-confirm").click().run()
    assert wait_done(ws_root, 1) == "completed"
    assert len(list((ws_root / "images").rglob("*.jpg"))) == 1


def test_running_job_shows_on_home(ws_root: Path, image_server: ImageServer, tmp_path: Path) -> None:
    for i in range(30):
        image_server.add(f"h{i}.jpg", make_jpeg(16, 16, seed=i))
    rows = [[image_server.url(f"/slow/0.3/h{i}.jpg"), "1", "e", "v"] for i in range(30)]
    csv_path = write_csv(tmp_path / "train.csv", HEADER, rows)
    ws = Workspace(ws_root)
    manager = JobManager(ws)
    from services.stages.download.urls import start_url_download

    job_id = start_url_download(ws, manager, csv_path, "slow")
    manager.start_background(job_id)
    deadline = time.time() + 30
    while manager.progress(job_id).state != "running" and time.time() < deadline:
        time.sleep(0.1)
    at = app_test().run()
    assert any("Job 1" in m.value and "`running`" in m.value for m in at.markdown)
    at.button(key="cancel-1").click().run()
    assert manager.wait(job_id, timeout=30).state == "cancelled"
    ws.close()


def test_home_shows_the_worker_and_its_queue_in_order(ws_root: Path, tmp_path: Path) -> None:
    """Handed jobs wait for the workspace's worker; Home lists them in the order it will run them and says
    whether a worker serves the workspace (none here: the fix is named)."""
    from services.stages.download.folder_import import start_folder_import
    from tests.support.tagged_images import tagged_tree

    ws = Workspace(ws_root)
    manager = JobManager(ws)
    first = start_folder_import(ws, manager, tagged_tree(tmp_path / "one", per_tag=1), "one", workers=0)
    second = start_folder_import(ws, manager, tagged_tree(tmp_path / "two", per_tag=1), "two", workers=0)
    manager.hand_to_worker(second)
    manager.hand_to_worker(first)
    at = app_test().run()
    assert not at.exception
    assert any("No worker serves this workspace" in c.value and "workbench worker" in c.value for c in at.caption)
    queue = next(d.value for d in at.dataframe if "order" in d.value.columns)
    assert list(queue["job"]) == [second, first] and list(queue["order"]) == [1, 2]
    ws.close()


def test_home_exports_a_dataset_into_the_workspace(ws_root: Path, tmp_path: Path) -> None:
    """Home's "Export a dataset": a format and a label source picked, the job started into exports/ (never a path
    typed on the page), and the files there once it ends."""
    from services.stages.download.folder_import import start_folder_import
    from tests.support.tagged_images import tagged_tree

    ws = Workspace(ws_root)
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, tagged_tree(tmp_path / "tree", per_tag=2), "shapes"))
    at = app_test().run()
    assert not at.exception, at.exception
    at.radio(key="home-export-format").set_value("webdataset").run()
    assert at.selectbox(key="home-export-by").options == ["tag", "none", "column:path", "column:tag"]
    at.button(key="home-export-start").click().run()
    assert not at.exception, at.exception
    [job] = [j for j in manager.list(limit=5) if j.kind == "export"]
    assert job.params["format"] == "webdataset" and job.params["out"] == str(ws_root.resolve() / "exports" /
                                                                            "shapes-webdataset")  # fmt: skip
    assert wait_done(ws_root, job.id) == "completed"
    assert list((ws_root / "exports" / "shapes-webdataset").glob("shapes-*.tar"))
    ws.close()
