import os
import stat
import tarfile

import pytest

from scheduler.errors import FailedPrecondition, InvalidArgument, NotFound
from scheduler.volumes.base import Volume
from scheduler.volumes.host import HostVolumeStore as VolumeStore


@pytest.fixture
def store(tmp_path):
    return VolumeStore(tmp_path / "volumes")


def test_ensure_creates_a_0755_directory_under_root_and_keeps_data(store, tmp_path):
    path = store.ensure("demo", "pgdata")
    assert path == (tmp_path / "volumes" / "demo" / "pgdata").resolve()
    assert path.is_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    # The root and the environment's directory keep every host user out.
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "volumes").stat().st_mode) == 0o700
    (path / "PG_VERSION").write_text("15")
    assert store.ensure("demo", "pgdata") == path
    assert (path / "PG_VERSION").read_text() == "15"


def test_ensure_closes_directories_an_older_version_left_open(store, tmp_path):
    (tmp_path / "volumes" / "demo").mkdir(parents=True, mode=0o755)
    os.chmod(tmp_path / "volumes", 0o755)
    os.chmod(tmp_path / "volumes" / "demo", 0o755)
    store.ensure("demo", "pgdata")
    assert stat.S_IMODE((tmp_path / "volumes").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "volumes" / "demo").stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("env", "name", "field"),
    [
        ("demo", "../escape", "volume"),
        ("demo", "a/b", "volume"),
        ("demo", "", "volume"),
        ("demo", ".hidden", "volume"),
        ("..", "data", "env"),
        ("Demo", "data", "env"),
        ("demo/x", "data", "env"),
        ("", "data", "env"),
    ],
)
def test_bad_names_are_refused_naming_the_field(store, env, name, field):
    with pytest.raises(InvalidArgument) as err:
        store.path(env, name)
    assert field in [v.field for v in err.value.violations]
    assert not (store.root / "escape").exists()


def test_a_planted_symlink_cannot_redirect_a_volume_outside_root(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "demo").mkdir(parents=True)
    os.symlink(outside, store.root / "demo" / "data")
    with pytest.raises(FailedPrecondition, match="demo/data"):
        store.ensure("demo", "data")
    os.symlink(outside, store.root / "evil")
    with pytest.raises(FailedPrecondition):
        store.ensure("evil", "data")
    (outside / "data").mkdir()
    (outside / "data" / "precious").write_text("x")
    with pytest.raises(FailedPrecondition, match="symlink"):
        store.remove("evil", "data")
    # Removing follows no links: the planted links go, what they point at stays.
    store.remove("demo", "data")
    store.remove_environment("evil")
    assert (outside / "data" / "precious").read_text() == "x"
    assert not (store.root / "evil").exists() and not (store.root / "demo" / "data").exists()


def test_remove_and_remove_environment_are_idempotent(store):
    store.ensure("demo", "a")
    b = store.ensure("demo", "b")
    (b / "file").write_text("x")
    store.ensure("other", "a")
    store.remove("demo", "b")
    store.remove("demo", "b")
    assert [(v.env, v.name) for v in store.list()] == [("demo", "a"), ("other", "a")]
    store.remove_environment("demo")
    store.remove_environment("demo")
    store.remove_environment("never")
    assert [(v.env, v.name) for v in store.list()] == [("other", "a")]
    store.remove("other", "a")
    assert not (store.root / "other").exists()


def test_list_filters_by_environment_and_skips_foreign_entries(store):
    assert store.list() == []
    store.ensure("demo", "pgdata")
    store.ensure("demo", "cache")
    store.ensure("zeta", "pgdata")
    (store.root / "demo" / "stray.txt").write_text("not a volume")
    (store.root / "NotAnEnv").mkdir()
    assert store.list("demo") == [
        Volume("demo", "cache", store.path("demo", "cache")),
        Volume("demo", "pgdata", store.path("demo", "pgdata")),
    ]
    assert [(v.env, v.name) for v in store.list()] == [
        ("demo", "cache"),
        ("demo", "pgdata"),
        ("zeta", "pgdata"),
    ]
    assert store.list("missing") == []
    assert store.exists("demo", "cache") and not store.exists("demo", "nope")


def test_size_counts_file_bytes(store):
    path = store.ensure("demo", "data")
    (path / "a").write_bytes(b"x" * 100)
    (path / "sub").mkdir()
    (path / "sub" / "b").write_bytes(b"y" * 23)
    assert store.size("demo", "data") == 123
    with pytest.raises(NotFound, match="demo/none"):
        store.size("demo", "none")


def test_backup_and_restore_round_trip_with_owners_and_modes(store, tmp_path):
    path = store.ensure("demo", "pgdata")
    (path / "base").mkdir()
    (path / "base" / "1").write_bytes(b"\x00\x01table")
    (path / "PG_VERSION").write_text("15\n")
    os.chown(path / "PG_VERSION", 999, 999)
    os.chmod(path / "PG_VERSION", 0o600)
    os.chown(path, 999, 999)
    os.chmod(path, 0o700)
    archive = store.backup("demo", "pgdata", tmp_path / "backup.tar.gz")
    assert archive.is_file()
    assert not list(tmp_path.glob(".*partial"))

    (path / "PG_VERSION").write_text("garbage")
    (path / "extra").write_text("not in the backup")
    restored = store.restore("demo", "pgdata", archive)
    assert restored == path
    assert (path / "PG_VERSION").read_text() == "15\n"
    assert (path / "base" / "1").read_bytes() == b"\x00\x01table"
    assert not (path / "extra").exists()
    info = (path / "PG_VERSION").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (999, 999, 0o600)
    assert path.stat().st_uid == 999
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert [v.name for v in store.list()] == ["pgdata"]  # no scratch left behind


def test_restore_into_a_new_volume(store, tmp_path):
    src = store.ensure("demo", "a")
    (src / "f").write_text("hello")
    archive = store.backup("demo", "a", tmp_path / "a.tgz")
    store.restore("copy", "a", archive)
    assert (store.path("copy", "a") / "f").read_text() == "hello"


def test_restore_refuses_escaping_members_and_keeps_current_data(store, tmp_path):
    path = store.ensure("demo", "data")
    (path / "keep").write_text("current")
    evil = tmp_path / "evil.tar"
    payload = tmp_path / "payload"
    payload.write_text("pwned")
    with tarfile.open(evil, "w") as archive:
        archive.add(payload, arcname="../../escaped")
    with pytest.raises(InvalidArgument) as err:
        store.restore("demo", "data", evil)
    assert err.value.violations[0].field == "tar_path"
    assert (path / "keep").read_text() == "current"
    assert not (store.root / "escaped").exists() and not (tmp_path / "escaped").exists()

    links = tmp_path / "links.tar"
    with tarfile.open(links, "w") as archive:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        archive.addfile(info)
    with pytest.raises(InvalidArgument):
        store.restore("demo", "data", links)
    assert (path / "keep").read_text() == "current"


def test_restore_of_a_missing_or_corrupt_archive(store, tmp_path):
    with pytest.raises(NotFound):
        store.restore("demo", "data", tmp_path / "missing.tgz")
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"not a tar at all" * 10)
    with pytest.raises(InvalidArgument):
        store.restore("demo", "data", bad)


def test_backup_of_a_missing_volume_is_not_found(store, tmp_path):
    with pytest.raises(NotFound, match="demo/data"):
        store.backup("demo", "data", tmp_path / "x.tgz")


# --- seeding from a template ---------------------------------------------------------------------


def _template(tmp_path):
    source = tmp_path / "template"
    (source / "base" / "1").mkdir(parents=True)
    (source / "PG_VERSION").write_text("15\n")
    (source / "base" / "1" / "1259").write_bytes(os.urandom(70_000))
    (source / "empty").write_bytes(b"")
    os.symlink("/etc/passwd", source / "link")
    os.chmod(source, 0o700)
    return source


def test_seed_copies_the_template_as_the_volume_keeping_modes_and_symlinks(store, tmp_path):
    source = _template(tmp_path)
    setuid = source / "tool"
    setuid.write_bytes(b"#!/bin/sh\n")
    os.chmod(setuid, 0o4755)
    os.mkfifo(source / "fifo")
    assert store.seed("demo", "pgdata", source) is True
    path = store.path("demo", "pgdata")
    assert (path / "PG_VERSION").read_text() == "15\n"
    assert (path / "base" / "1" / "1259").read_bytes() == (source / "base" / "1" / "1259").read_bytes()
    assert (path / "empty").read_bytes() == b""
    assert os.readlink(path / "link") == "/etc/passwd"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    # No setuid path and no special files come through a copy.
    assert stat.S_IMODE((path / "tool").stat().st_mode) == 0o755
    assert not (path / "fifo").exists()
    assert [v.name for v in store.list("demo")] == ["pgdata"]
    assert not [p for p in path.parent.iterdir() if p.name != "pgdata"]


def test_seed_leaves_a_volume_with_data_alone_and_fills_an_empty_one(store, tmp_path):
    source = _template(tmp_path)
    store.ensure("demo", "pgdata")
    assert store.seed("demo", "pgdata", source) is True
    (store.path("demo", "pgdata") / "PG_VERSION").write_text("mine")
    assert store.seed("demo", "pgdata", source) is False
    assert (store.path("demo", "pgdata") / "PG_VERSION").read_text() == "mine"


def test_seed_places_the_copy_at_a_subpath_inside_the_volume(store, tmp_path):
    source = _template(tmp_path)
    assert store.seed("demo", "pgdata", source, subpath="pg/data") is True
    path = store.path("demo", "pgdata")
    assert (path / "pg" / "data" / "PG_VERSION").read_text() == "15\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert stat.S_IMODE((path / "pg").stat().st_mode) == 0o755
    with pytest.raises(InvalidArgument):
        store.seed("other", "pgdata", source, subpath="../x")
    with pytest.raises(NotFound):
        store.seed("other", "pgdata", tmp_path / "missing")
    assert not store.exists("other", "pgdata")


def test_a_failed_seed_leaves_no_half_volume(store, tmp_path, monkeypatch):
    source = _template(tmp_path)
    import scheduler.volumes.host as host

    def broken(src, dst):
        os.mkdir(dst)
        (dst / "PG_VERSION").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(host, "copy_tree", broken)
    with pytest.raises(Exception, match="No space left"):
        store.seed("demo", "pgdata", source)
    assert not store.exists("demo", "pgdata")
    assert list(store.path("demo", "pgdata").parent.iterdir()) == []


def test_copy_tree_refuses_an_existing_target_and_a_symlinked_source(tmp_path):
    from scheduler.volumes.copy import copy_tree

    source = _template(tmp_path)
    stats = copy_tree(source, tmp_path / "copy")
    assert (stats.files, stats.symlinks, stats.bytes) == (3, 1, 70_003)
    with pytest.raises(FileExistsError):
        copy_tree(source, tmp_path / "copy")
    os.symlink(source, tmp_path / "alias")
    with pytest.raises(NotADirectoryError):
        copy_tree(tmp_path / "alias", tmp_path / "other")


# --- copies are on disk before they become data --------------------------------------------------


@pytest.fixture
def flushes(monkeypatch):
    """Every sync_filesystem call of the volume store: (path flushed, files under it at that moment)."""
    import scheduler.volumes.host as host

    calls = []

    def spy(path):
        calls.append((path, sorted(p.name for p in path.rglob("*"))))

    monkeypatch.setattr(host, "sync_filesystem", spy)
    return calls


def test_a_seeded_copy_is_flushed_before_it_becomes_the_volume(store, tmp_path, flushes):
    source = _template(tmp_path)
    assert store.seed("demo", "pgdata", source) is True
    [(flushed, files)] = flushes
    # The scratch copy, whole, not yet in place: a crash before the rename leaves no volume.
    assert flushed.parent == store.path("demo", "pgdata").parent and flushed.name != "pgdata"
    assert "PG_VERSION" in files and "1259" in files
    # A spare moved into place was flushed when it was made: a rename needs no flush.
    from scheduler.volumes.copy import copy_tree

    spare = tmp_path / "spare"
    copy_tree(source, spare)
    assert store.seed("other", "pgdata", spare, move=True) is True
    assert len(flushes) == 1


def test_a_staged_clone_and_a_restore_are_flushed_before_they_replace_anything(store, tmp_path, flushes):
    staging = store.staging()
    staged = staging / "pgdata"
    staged.mkdir()
    (staged / "PG_VERSION").write_text("15\n")
    store.adopt("clone", "pgdata", staged)
    assert flushes == [(staged.resolve(), ["PG_VERSION"])]

    volume = store.ensure("demo", "pgdata")
    (volume / "old").write_text("old")
    archive = tmp_path / "backup.tar"
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "PG_VERSION").write_text("15\n")
    with tarfile.open(archive, "w") as tar:
        tar.add(saved, arcname=".")
    store.restore("demo", "pgdata", archive)
    flushed, files = flushes[-1]
    assert "PG_VERSION" in files and "old" not in files  # the restored copy, before it replaced the old data
    assert (store.path("demo", "pgdata") / "PG_VERSION").read_text() == "15\n"


def test_sync_filesystem_flushes_a_real_directory_and_refuses_a_file(tmp_path):
    from scheduler.volumes.copy import sync_filesystem

    (tmp_path / "file").write_text("x")
    sync_filesystem(tmp_path)
    with pytest.raises(NotADirectoryError):
        sync_filesystem(tmp_path / "file")
