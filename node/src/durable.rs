//! Small files that must survive a power cut whole.

/// Replace `path` with `bytes` so that a power cut leaves the old or the
/// new contents, never an empty file: a synced temporary file renamed over
/// it.
pub fn save(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
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
