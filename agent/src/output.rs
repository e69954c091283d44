//! The files a command writes: the output directory checked before anything attaches, made
//! again if it was removed during the window, and every file written atomically.

use std::io::Write as _;
use std::path::Path;

use crate::{error::Error, system};

/// Creates the output directory and checks files can be written in it, before anything is
/// attached; a failure names the reason (a pseudo-filesystem such as /proc, read-only, denied).
pub fn prepare_output(dir: &Path) -> Result<(), Error> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        let existing = dir
            .ancestors()
            .find(|a| a.is_dir())
            .unwrap_or(Path::new("/"));
        return Err(Error::OutputNotWritable {
            path: dir.to_path_buf(),
            reason: format!(
                "creating it in {} failed: {}",
                existing.display(),
                system::unwritable_reason(existing, &e)
            ),
        });
    }
    check_writable(dir)
}

/// Free space below which a window's files would likely not fit (a profile of a busy process
/// takes up to a few MiB): refused before anything attaches.
const MIN_FREE_BYTES: u64 = 1 << 20;

fn check_writable(dir: &Path) -> Result<(), Error> {
    let probe = dir.join(".stallscope-write-test");
    std::fs::write(&probe, b"").map_err(|e| Error::OutputNotWritable {
        path: dir.to_path_buf(),
        reason: system::unwritable_reason(dir, &e),
    })?;
    let _ = std::fs::remove_file(probe);
    if let Some(free) = system::free_bytes(dir)
        && free < MIN_FREE_BYTES
    {
        return Err(Error::OutputNotWritable {
            path: dir.to_path_buf(),
            reason: format!(
                "only {} KiB are free on its filesystem, and one window's profiles can take a \
                 few MiB; free some space there",
                free / 1024
            ),
        });
    }
    Ok(())
}

/// Before the results are written: a directory removed during the window is made again (the
/// profiles are in memory; losing them to an `rm` would help nobody), and said so.
pub fn restore_output(dir: &Path) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Output {
        path: dir.to_path_buf(),
        source,
    })?;
    eprintln!(
        "stallscope: the output directory {} was removed during the window; created it again",
        dir.display()
    );
    Ok(())
}

/// Writes `bytes` to `path` atomically (a temporary file in the same directory, then rename):
/// a reader never sees a partial file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "profile".into());
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
