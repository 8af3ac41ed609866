//! Small files that must survive a power cut whole.

/// Replace `path` with `bytes` so that a power cut leaves the old or the
/// new contents, never an empty file: a synced temporary file renamed over
/// it. A new file is readable by its owner only (0600), as everything in
/// a data directory is.
pub fn save(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        d.sync_all()?;
    }
    Ok(())
}
