//! Reading the small files around a model (JSON configs, tokenizers) with a size limit:
//! a path may name anything, `/dev/zero` or a 50 GB file included, and no more than the
//! limit (plus one byte) is ever read.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Largest JSON side file read (`config.json`, `params.json`, `generation_config.json`,
/// `tokenizer_config.json`, the safetensors index: all well under 1 MB in practice).
pub const MAX_JSON_FILE_BYTES: u64 = 16 << 20;

/// The bytes of `path`, or an I/O error naming it when it holds more than `limit`.
pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // Sized from the file when it says (a regular file), so the buffer never doubles past
    // the limit; devices and pipes report 0 and grow as they are read.
    let size = file
        .metadata()
        .map_or(0, |m| m.len())
        .min(limit.saturating_add(1));
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        let msg = format!("larger than {} MiB, the limit for this file", limit >> 20);
        return Err(Error::io(path, std::io::Error::other(msg)));
    }
    Ok(bytes)
}

/// A JSON side file of at most [`MAX_JSON_FILE_BYTES`], as text.
pub(crate) fn read_json_text(path: &Path) -> Result<String> {
    let bytes = read_limited(path, MAX_JSON_FILE_BYTES)?;
    String::from_utf8(bytes).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_limit() {
        let dir = std::env::temp_dir().join(format!("llama2-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("big.json");
        std::fs::write(&p, vec![b' '; 1025]).unwrap();
        assert_eq!(read_limited(&p, 1025).unwrap().len(), 1025);
        let e = read_limited(&p, 1024).unwrap_err().to_string();
        assert!(e.contains("big.json") && e.contains("limit"), "{e}");
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_json_text(&p), Err(Error::Io { .. })));
        // A device that never ends is cut at the limit, not read to exhaustion.
        if Path::new("/dev/zero").exists() {
            assert!(read_limited(Path::new("/dev/zero"), 1 << 20).is_err());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
