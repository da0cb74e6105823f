"""Issue 15: the pieces of the scale-out profile that need no cluster (config parsing, the
network-FS guard, batch splitting, tier publication rules on a plain folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pad_assets import maintenance as mt
from pad_assets.deployment import DAGSTER_YAML
from pad_assets.deployment import localparts as lp
from pad_assets.deployment.executor import (
    BATCH_RESOURCE,
    dask_cluster_config,
    require_batch_workers,
    step_resources,
    with_batch_resource,
)
from pad_assets.deployment.localdisk import mount_type, require_local_disk
from pad_assets.errors import IntegrityError, InvalidInputError
from pad_assets.hashing import sha256_bytes
from pad_assets.sharing import pull, push
from pad_assets.sharing.remote import remote_index
from pad_assets.sharing.tier_verify import verify_tier
from pad_assets.store import CardRecord, ContentStore, NewItem


def test_the_profile_is_postgres_with_a_queued_coordinator() -> None:
    import yaml

    prof = yaml.safe_load(DAGSTER_YAML.read_text())
    assert prof["storage"]["postgres"]["postgres_url"] == {"env": "PAD_DAGSTER_PG_URL"}
    rc = prof["run_coordinator"]
    assert rc["class"] == "QueuedRunCoordinator" and rc["config"]["max_concurrent_runs"] >= 1


@pytest.mark.parametrize("text, want", [
    ("existing: {address: 'tcp://10.0.0.5:8786'}", {"existing": {"address": "tcp://10.0.0.5:8786"}}),
    ("local: {n_workers: 2, threads_per_worker: 1}", {"local": {"n_workers": 2,
                                                                "threads_per_worker": 1}}),
    ("slurm: {cores: 1, memory: 4GB, queue: normal}", {"slurm": {"cores": 1, "memory": "4GB",
                                                                 "queue": "normal"}}),
    ("local:", {"local": {}}),
    ("", None),
])
def test_the_dask_cluster_comes_from_configuration(text: str, want: object) -> None:
    assert dask_cluster_config(text) == want


@pytest.mark.parametrize("text", ["existing: {}", "kubernetes: {}", "[1, 2]", "a: b\nc: d",
                                  "existing: {address"])
def test_a_wrong_dask_configuration_is_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidInputError, match="PAD_ASSETS_DASK"):
        dask_cluster_config(text)


def test_the_dask_cluster_config_may_be_a_yaml_file(tmp_path: Path) -> None:
    f = tmp_path / "dask.yaml"
    f.write_text("sge:\n  cores: 1\n  memory: 2GB\n")
    assert dask_cluster_config(str(f)) == {"sge": {"cores": 1, "memory": "2GB"}}


def test_clusters_the_executor_starts_declare_one_batch_slot_per_worker() -> None:
    assert with_batch_resource("local", {"n_workers": 2}) == {
        "n_workers": 2, "resources": {BATCH_RESOURCE: 1}}
    assert with_batch_resource("local", {"resources": {BATCH_RESOURCE: 3}})["resources"] == {
        BATCH_RESOURCE: 3}  # a lab's own count is kept
    assert with_batch_resource("ssh", {"hosts": ["a", "b"]})["worker_options"] == {
        "resources": {BATCH_RESOURCE: 1}}
    assert with_batch_resource("existing", {"address": "tcp://h:1"}) == {"address": "tcp://h:1"}
    kept = ["--resources", f"{BATCH_RESOURCE}=2"]
    assert with_batch_resource("sge", {"worker_extra_args": kept})["worker_extra_args"] == kept
    # dask-jobqueue writes the declaration into the batch job's worker command
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is a scaleout extra")
    from dask_jobqueue import SLURMCluster

    opts = with_batch_resource("slurm", {"cores": 1, "memory": "1GB", "processes": 1})
    with SLURMCluster(**opts, scheduler_options={"host": "127.0.0.1"}) as cluster:
        script = cluster.job_script()
    assert f"--resources {BATCH_RESOURCE}=1" in script, script


def test_a_step_holds_one_batch_slot_unless_its_op_asks_otherwise() -> None:
    assert step_resources({}) == {BATCH_RESOURCE: 1}
    assert step_resources({"dagster-dask/resource_requirements": '{"GPU": 1}'}) == {"GPU": 1}


def test_workers_without_the_batch_slot_are_refused_naming_the_flag(tmp_path: Path) -> None:
    from distributed import Client

    try:
        with lp.dask_cluster(tmp_path / "dask") as dask, \
                Client(dask.address, timeout=10) as client:
            require_batch_workers(client, dask.address)  # no workers yet: they may come
            dask.add_worker("plain", {}, resources={})
            with pytest.raises(InvalidInputError,
                               match=rf"\['plain'\] declare no '{BATCH_RESOURCE}'.*"
                                     rf"--resources {BATCH_RESOURCE}=1"):
                require_batch_workers(client, dask.address)
            dask.add_worker("pad", {})  # localparts declares one pad_batch by default
            require_batch_workers(client, dask.address)
    except lp.PartUnavailable as exc:
        pytest.skip(f"scale-out part unavailable: {exc}")


def test_a_cache_on_a_network_file_system_is_refused(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {tmp_path}/nfs nfs4 rw 0 0\n"
                      f"s3fs {tmp_path}/bucket fuse.s3fs rw 0 0\n")
    (tmp_path / "nfs" / "cache").mkdir(parents=True)
    (tmp_path / "bucket").mkdir()
    assert mount_type(tmp_path / "nfs" / "cache", str(mounts)) == "nfs4"
    assert mount_type(tmp_path / "local", str(mounts)) == "ext4"
    with pytest.raises(InvalidInputError, match="nfs4 network file system"):
        require_local_disk(tmp_path / "nfs" / "cache", mounts=str(mounts))
    with pytest.raises(InvalidInputError, match="fuse.s3fs"):
        require_local_disk(tmp_path / "bucket" / "c", mounts=str(mounts))
    require_local_disk(tmp_path / "local", mounts=str(mounts))  # no error


def _store_with(root: Path, dataset: str, n: int, start: int = 0) -> ContentStore:
    store = ContentStore(root)
    for i in range(start, n):
        data = f"{dataset} card {i}".encode() * 50
        store.put([NewItem(sha256_bytes(data), "raw", data, {})],
                  cards=[CardRecord(dataset, i, sha256_bytes(data), "ok")])
    return store


def _raw_count(store: ContentStore) -> int:
    return store.index.query("SELECT COUNT(*) FROM items WHERE layer='raw'")[0][0]


def test_a_shard_without_its_entry_is_invisible_until_a_push_publishes_it(
        tmp_path: Path) -> None:
    """What a push killed between copying a shard and writing its entry leaves behind."""
    src = _store_with(tmp_path / "src", "dsA", 3)
    tier = tmp_path / "tier"
    first = push(src, str(tier))
    assert len(first.pushed) == 3
    # the killed push: one more shard's bytes are on the tier, its entry is not
    src.close()
    extra = _store_with(tmp_path / "src", "dsA", 4, start=3)  # same cache, one more card
    new = sorted(set(extra.index.shard_paths()) - set(first.pushed))
    assert len(new) == 1
    rel = extra.index.shard_paths()[new[0]]
    (tier / rel).parent.mkdir(parents=True, exist_ok=True)
    (tier / rel).write_bytes((extra.root / rel).read_bytes()[:1000])  # half-written
    reader = ContentStore(tmp_path / "reader")
    got = pull(reader, str(tier))
    assert new[0] not in got.pulled and not got.failed  # never seen: not published
    assert _raw_count(reader) == 3
    rep = verify_tier(str(tier))
    assert rep.ok and rep.unpublished == new
    # the rerun publishes it whole; the reader then takes it
    again = push(extra, str(tier))
    assert again.pushed == new and again.already_there == 3
    assert push(extra, str(tier)).pushed == []  # idempotent
    assert set(pull(reader, str(tier)).pulled) == set(new)
    assert _raw_count(reader) == 4 and mt.verify(reader).ok
    assert verify_tier(str(tier)).ok and verify_tier(str(tier)).unpublished == []


def test_entries_that_disagree_about_a_shard_keep_it_out(tmp_path: Path) -> None:
    src = _store_with(tmp_path / "src", "dsB", 2)
    tier = tmp_path / "tier"
    push(src, str(tier))
    name = sorted(remote_index(str(tier)))[0]
    good = next((tier / "index" / name[:6]).glob(f"{name}.*.json"))
    liar = json.loads(good.read_text())
    liar["sha256"] = "0" * 64
    (good.parent / f"{name}.{'f' * 16}.json").write_text(json.dumps(liar))
    assert "conflict" in remote_index(str(tier))[name]
    reader = ContentStore(tmp_path / "reader")
    with pytest.raises(IntegrityError, match="disagree"):
        pull(reader, str(tier))
    assert name not in reader.index.shard_paths()
    assert not verify_tier(str(tier)).ok
