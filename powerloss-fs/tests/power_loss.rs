//! The file system's power-loss semantics, checked through real system calls on a mount.
//!
//! Each test mounts on a fresh temporary directory and always unmounts (the [`Fixture`] drop
//! guard). Without `/dev/fuse` (or without root and `fusermount3`) the tests are skipped, unless
//! the environment variable `CI` is set: then they fail.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{fallocate, FallocateFlags};
use powerloss_fs::{availability, Entry, Image, Mount, Options, Stats};

/// `false` (skip) when FUSE cannot be used here and `CI` is unset; panics when `CI` is set.
fn fuse_ready(test: &str) -> bool {
    match availability() {
        Ok(()) => true,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("{test}: {e}, and CI is set: this test must run")
        }
        Err(e) => {
            eprintln!("{test}: skipped: {e}");
            false
        }
    }
}

/// A mount on a fresh temporary directory; dropping it unmounts.
struct Fixture {
    mount: Option<Mount>,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(image: Image, options: Options) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mount = Mount::mount(dir.path(), image, options).unwrap();
        Fixture {
            root: mount.mountpoint().to_path_buf(),
            mount: Some(mount),
            _dir: dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn mount(&self) -> &Mount {
        self.mount.as_ref().unwrap()
    }

    fn cut(&mut self) -> Image {
        self.mount.take().unwrap().cut_power().unwrap()
    }

    fn unmount(&mut self) -> Image {
        self.mount.take().unwrap().unmount().unwrap()
    }

    /// fsync of a directory under the mount ("" = the root).
    fn sync_dir(&self, name: &str) {
        File::open(self.path(name)).unwrap().sync_all().unwrap();
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A file `name` with `data`, synced, and its name synced in the root.
fn durable_file(fx: &Fixture, name: &str, data: &[u8]) {
    let mut f = File::create(fx.path(name)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    fx.sync_dir("");
}

#[test]
fn power_loss_synced_data_survives_byte_exact() {
    if !fuse_ready("power_loss_synced_data_survives_byte_exact") {
        return;
    }
    let mut fx = Fixture::new(Image::default(), Options::new());
    let data = pattern(3 * 4096 + 123, 7);
    durable_file(&fx, "f", &data);
    // Also a file in a subdirectory, synced with fdatasync.
    std::fs::create_dir(fx.path("d")).unwrap();
    fx.sync_dir("");
    let mut g = File::create(fx.path("d/g")).unwrap();
    g.write_all(b"hello").unwrap();
    g.sync_data().unwrap();
    fx.sync_dir("d");
    assert_eq!(
        fx.mount().stats(),
        Stats {
            fsyncs: 2,
            fsyncdirs: 3,
            bytes_written: data.len() as u64 + 5,
            enospc: 0,
            after_cut: 0,
        }
    );
    let image = fx.cut();
    assert_eq!(image.read("f"), Some(&data[..]));
    assert_eq!(image.read("d/g"), Some(&b"hello"[..]));
    // Mounted again, the data reads back through the kernel.
    let fx2 = Fixture::new(image, Options::new());
    assert_eq!(std::fs::read(fx2.path("f")).unwrap(), data);
    assert_eq!(std::fs::read(fx2.path("d/g")).unwrap(), b"hello");
}

#[test]
fn power_loss_unsynced_data_is_lost() {
    if !fuse_ready("power_loss_unsynced_data_is_lost") {
        return;
    }
    let mut fx = Fixture::new(Image::default(), Options::new());
    let old = pattern(10_000, 1);
    durable_file(&fx, "f", &old);
    // Overwrite the middle and append, without fsync.
    let f = OpenOptions::new().write(true).open(fx.path("f")).unwrap();
    f.write_all_at(&[0xAA; 5000], 4000).unwrap();
    f.write_all_at(&[0xBB; 100], 20_000).unwrap();
    assert_eq!(std::fs::metadata(fx.path("f")).unwrap().len(), 20_100);
    // A new file written (not synced) in a synced directory is empty after the cut.
    let mut h = File::create(fx.path("h")).unwrap();
    h.write_all(b"lost").unwrap();
    fx.sync_dir("");
    let image = fx.cut();
    assert_eq!(image.read("f"), Some(&old[..]));
    assert_eq!(image.read("h"), Some(&b""[..]));
    drop((f, h));
}

#[test]
fn power_loss_new_file_needs_fsyncdir_in_strict_mode() {
    if !fuse_ready("power_loss_new_file_needs_fsyncdir_in_strict_mode") {
        return;
    }
    for ext4 in [false, true] {
        let mut fx = Fixture::new(Image::default(), Options::new().ext4_like(ext4));
        std::fs::create_dir(fx.path("d")).unwrap();
        fx.sync_dir("");
        let mut f = File::create(fx.path("d/new")).unwrap();
        f.write_all(b"payload").unwrap();
        f.sync_all().unwrap();
        let image = fx.cut();
        if ext4 {
            assert_eq!(image.read("d/new"), Some(&b"payload"[..]), "ext4_like");
        } else {
            assert!(!image.exists("d/new"), "strict: the name was never synced");
            assert_eq!(image.list("d"), Some(vec![]));
        }
    }
    // ext4_like also persists a new directory chain up to the root.
    let mut fx = Fixture::new(Image::default(), Options::new().ext4_like(true));
    std::fs::create_dir_all(fx.path("a/b")).unwrap();
    let mut f = File::create(fx.path("a/b/c")).unwrap();
    f.write_all(b"deep").unwrap();
    f.sync_all().unwrap();
    let image = fx.cut();
    assert_eq!(image.read("a/b/c"), Some(&b"deep"[..]));
}

#[test]
fn power_loss_rename_without_fsyncdir_is_undone() {
    if !fuse_ready("power_loss_rename_without_fsyncdir_is_undone") {
        return;
    }
    // Strict: undone; after fsyncdir: done; ext4_like: the file's fsync commits it.
    for (sync_dir, ext4, renamed) in [
        (false, false, false),
        (true, false, true),
        (false, true, true),
    ] {
        let mut fx = Fixture::new(Image::default(), Options::new().ext4_like(ext4));
        durable_file(&fx, "a", b"A");
        durable_file(&fx, "b", b"B");
        std::fs::rename(fx.path("a"), fx.path("b")).unwrap();
        if sync_dir {
            fx.sync_dir("");
        }
        if ext4 {
            File::open(fx.path("b")).unwrap().sync_all().unwrap();
        }
        let image = fx.cut();
        let ctx = format!("sync_dir {sync_dir} ext4 {ext4}");
        if renamed {
            assert_eq!(image.list(""), Some(vec!["b".into()]), "{ctx}");
            assert_eq!(image.read("b"), Some(&b"A"[..]), "{ctx}");
        } else {
            assert_eq!(image.list(""), Some(vec!["a".into(), "b".into()]), "{ctx}");
            assert_eq!(image.read("a"), Some(&b"A"[..]), "{ctx}");
            assert_eq!(image.read("b"), Some(&b"B"[..]), "{ctx}");
        }
    }
}

#[test]
fn power_loss_unlink_without_fsyncdir_is_undone() {
    if !fuse_ready("power_loss_unlink_without_fsyncdir_is_undone") {
        return;
    }
    let mut fx = Fixture::new(Image::default(), Options::new());
    durable_file(&fx, "a", b"still here");
    durable_file(&fx, "gone", b"x");
    std::fs::remove_file(fx.path("a")).unwrap();
    std::fs::remove_file(fx.path("gone")).unwrap();
    File::open(fx.path("")).unwrap(); // no sync
    let image = fx.cut();
    assert_eq!(image.read("a"), Some(&b"still here"[..]));
    assert_eq!(image.read("gone"), Some(&b"x"[..]));
}

#[test]
fn power_loss_truncate_without_fsync_is_undone() {
    if !fuse_ready("power_loss_truncate_without_fsync_is_undone") {
        return;
    }
    for sync in [false, true] {
        let mut fx = Fixture::new(Image::default(), Options::new());
        let data = pattern(8000, 3);
        durable_file(&fx, "f", &data);
        let f = OpenOptions::new().write(true).open(fx.path("f")).unwrap();
        f.set_len(10).unwrap();
        // Shrink then grow: the regrown bytes are zeros, not the old data.
        f.set_len(6000).unwrap();
        if sync {
            f.sync_all().unwrap();
        }
        let image = fx.cut();
        let mut want = data.clone();
        if sync {
            want.truncate(10);
            want.resize(6000, 0);
        }
        assert_eq!(image.read("f"), Some(&want[..]), "sync {sync}");
        drop(f);
    }
}

#[test]
fn power_loss_enospc_at_capacity() {
    if !fuse_ready("power_loss_enospc_at_capacity") {
        return;
    }
    let mut fx = Fixture::new(Image::default(), Options::new().capacity(Some(10_000)));
    let f = File::create(fx.path("f")).unwrap();
    f.write_all_at(&[1; 8000], 0).unwrap();
    let err = f.write_all_at(&[2; 4000], 8000).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    let err = f.set_len(20_000).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    // Overwriting in place needs no space.
    f.write_all_at(&[3; 8000], 0).unwrap();
    assert_eq!(fx.mount().used_bytes(), 8000);
    fx.mount().set_capacity(None);
    f.write_all_at(&[4; 4000], 8000).unwrap();
    assert_eq!(fx.mount().used_bytes(), 12_000);
    assert_eq!(fx.mount().stats().enospc, 2);
    // An unlinked file frees its space once closed.
    fx.mount().set_capacity(Some(12_000));
    std::fs::remove_file(fx.path("f")).unwrap();
    drop(f);
    // close(2) sends the release asynchronously.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while fx.mount().used_bytes() != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(fx.mount().used_bytes(), 0);
    let image = fx.unmount();
    assert_eq!(image.tree().len(), 0);
}

#[test]
fn power_loss_every_operation_after_the_cut_fails_with_eio() {
    if !fuse_ready("power_loss_every_operation_after_the_cut_fails_with_eio") {
        return;
    }
    let mut fx = Fixture::new(Image::default(), Options::new());
    durable_file(&fx, "f", b"0123456789");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.path("f"))
        .unwrap();
    let dir = File::open(fx.path("")).unwrap();
    let image = fx.cut();
    assert_eq!(image.read("f"), Some(&b"0123456789"[..]));
    let eio = |r: std::io::Result<()>, what: &str| {
        assert_eq!(
            r.unwrap_err().raw_os_error(),
            Some(libc::EIO),
            "{what} after the cut"
        );
    };
    eio(f.write_all_at(b"x", 0), "pwrite");
    eio(f.sync_all(), "fsync");
    eio(f.sync_data(), "fdatasync");
    eio(f.set_len(3), "ftruncate");
    let mut buf = [0u8; 4];
    eio(f.read_exact_at(&mut buf, 0), "pread");
    eio(f.read(&mut buf).map(|_| ()), "read");
    eio(dir.sync_all(), "fsyncdir");
    drop((f, dir));
}

#[test]
fn power_loss_remount_of_an_image_twice_gives_the_same_content() {
    if !fuse_ready("power_loss_remount_of_an_image_twice_gives_the_same_content") {
        return;
    }
    let mut fx = Fixture::new(Image::default(), Options::new());
    std::fs::create_dir_all(fx.path("x/y")).unwrap();
    fx.sync_dir("");
    fx.sync_dir("x");
    durable_file(&fx, "top", &pattern(5000, 9));
    let mut f = File::create(fx.path("x/y/z")).unwrap();
    f.write_all(&pattern(70_000, 4)).unwrap();
    f.sync_all().unwrap();
    fx.sync_dir("x/y");
    File::create(fx.path("x/unsynced")).unwrap();
    let cut = fx.cut();
    let want = vec![
        (PathBuf::from("top"), Entry::File(pattern(5000, 9))),
        (PathBuf::from("x"), Entry::Dir),
        (PathBuf::from("x/y"), Entry::Dir),
        (PathBuf::from("x/y/z"), Entry::File(pattern(70_000, 4))),
    ];
    assert_eq!(cut.tree().into_iter().collect::<Vec<_>>(), want);
    let mut images = Vec::new();
    let mut image = cut.clone();
    for _ in 0..2 {
        let mut fx = Fixture::new(image.clone(), Options::new());
        assert_eq!(std::fs::read(fx.path("x/y/z")).unwrap(), pattern(70_000, 4));
        assert_eq!(list(&fx.path("x")), vec!["y".to_string()]);
        image = fx.unmount();
        images.push(image.clone());
        // Nothing synced in the new mount and nothing lost: a cut gives the same image too.
        let mut fx = Fixture::new(image.clone(), Options::new());
        assert_eq!(fx.cut().tree(), cut.tree());
    }
    assert_eq!(images[0].tree(), cut.tree());
    assert_eq!(images[1].tree(), cut.tree());
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn power_loss_torn_cache_keeps_a_seeded_subset_of_pages() {
    if !fuse_ready("power_loss_torn_cache_keeps_a_seeded_subset_of_pages") {
        return;
    }
    let run = |seed: u64| {
        let mut fx = Fixture::new(Image::default(), Options::new().torn_seed(Some(seed)));
        durable_file(&fx, "f", &[0u8; 64 * 4096]);
        let f = OpenOptions::new().write(true).open(fx.path("f")).unwrap();
        f.write_all_at(&[1u8; 64 * 4096], 0).unwrap();
        let image = fx.cut();
        drop(f);
        image.read("f").unwrap().to_vec()
    };
    let a = run(42);
    assert_eq!(a.len(), 64 * 4096);
    // Each page is either all old or all new.
    let pages: Vec<u8> = a
        .chunks(4096)
        .map(|p| {
            assert!(p.iter().all(|b| *b == p[0]));
            p[0]
        })
        .collect();
    let new = pages.iter().filter(|p| **p == 1).count();
    // Seed 42 keeps 33 of the 64 dirty pages (each survives with probability 1/2).
    assert_eq!(new, 33, "pages that survived");
    assert_eq!(run(42), a, "same seed, same survivors");
    assert_ne!(run(43), a, "another seed, other survivors");
}

#[test]
fn power_loss_fallocate_extends_with_zeros() {
    if !fuse_ready("power_loss_fallocate_extends_with_zeros") {
        return;
    }
    let mut fx = Fixture::new(Image::default(), Options::new().capacity(Some(100_000)));
    let f = File::create(fx.path("f")).unwrap();
    f.write_all_at(b"abc", 0).unwrap();
    fallocate(&f, FallocateFlags::empty(), 0, 50_000).unwrap();
    assert_eq!(fx.mount().used_bytes(), 50_000);
    assert_eq!(
        fallocate(&f, FallocateFlags::empty(), 0, 200_000),
        Err(nix::errno::Errno::ENOSPC)
    );
    // KEEP_SIZE reserves nothing here but is accepted; punching holes is not supported.
    fallocate(&f, FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, 60_000).unwrap();
    assert_eq!(
        fallocate(
            &f,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            10
        ),
        Err(nix::errno::Errno::EOPNOTSUPP)
    );
    assert_eq!(std::fs::metadata(fx.path("f")).unwrap().len(), 50_000);
    f.sync_all().unwrap();
    fx.sync_dir("");
    let image = fx.cut();
    let mut want = b"abc".to_vec();
    want.resize(50_000, 0);
    assert_eq!(image.read("f"), Some(&want[..]));
    drop(f);
}
