//! What this machine has of an NVIDIA GPU stack, read from files (no library is loaded): the
//! kernel driver, the devices, the GPU's model, and the TensorRT library's version. Used to
//! say what is missing when a GPU provider cannot start, and to key the TensorRT caches.

use std::path::{Path, PathBuf};

/// The GPU stack as seen under `root` (`/` in production; a fake tree in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProbe {
    /// `/proc/driver/nvidia/version`'s first line, when the kernel driver is loaded.
    pub driver: Option<String>,
    /// `/dev/nvidia0`, `/dev/nvidia1`…
    pub devices: usize,
    /// The first GPU's model (`Tesla T4`), from `/proc/driver/nvidia/gpus/*/information`.
    pub model: Option<String>,
}

impl GpuProbe {
    pub fn read() -> Self {
        Self::read_under(Path::new("/"))
    }

    pub fn read_under(root: &Path) -> Self {
        let driver = std::fs::read_to_string(root.join("proc/driver/nvidia/version"))
            .ok()
            .and_then(|text| text.lines().next().map(|l| l.trim().to_string()));
        let devices = std::fs::read_dir(root.join("dev"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("nvidia"))
                            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .count()
            })
            .unwrap_or(0);
        let model = sorted_entries(&root.join("proc/driver/nvidia/gpus"))
            .into_iter()
            .find_map(|gpu| {
                let info = std::fs::read_to_string(gpu.join("information")).ok()?;
                info.lines()
                    .find_map(|l| l.strip_prefix("Model:"))
                    .map(|m| m.trim().to_string())
            });
        Self {
            driver,
            devices,
            model,
        }
    }

    /// What stops a GPU provider here, as sentences; empty when driver and device are there.
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.driver.is_none() {
            missing.push(
                "no NVIDIA kernel driver is loaded (/proc/driver/nvidia/version is missing)".into(),
            );
        }
        if self.devices == 0 {
            missing.push(
                "no NVIDIA GPU device is visible (no /dev/nvidia0; in a container, request \
                 nvidia.com/gpu or pass --gpus)"
                    .into(),
            );
        }
        missing
    }
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|e| e.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    entries
}

/// TensorRT's version, from the `libnvinfer.so.*` found first in `dirs`: the full version
/// when the file name carries it (`libnvinfer.so.10.13.0`), else the major version and the
/// file's size, which differs between releases.
pub fn tensorrt_version(dirs: &[PathBuf]) -> Option<String> {
    dirs.iter().find_map(|dir| {
        let mut best: Option<(String, PathBuf)> = None;
        for path in sorted_entries(dir) {
            let Some(version) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("libnvinfer.so."))
                .map(str::to_string)
            else {
                continue;
            };
            if best.as_ref().is_none_or(|(v, _)| version.len() > v.len()) {
                best = Some((version, path));
            }
        }
        let (version, path) = best?;
        if version.matches('.').count() >= 2 {
            Some(version)
        } else {
            let size = std::fs::metadata(&path).ok()?.len();
            Some(format!("{version}-{size}"))
        }
    })
}

/// Where the loader would look for TensorRT: `LD_LIBRARY_PATH`, then beside ONNX Runtime's
/// library, then the usual system folders.
pub fn library_dirs(ort_library: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.extend(ort_library.parent().map(Path::to_path_buf));
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/usr/local/lib",
        ]
        .map(PathBuf::from),
    );
    dirs
}

/// A file-name-safe form of a GPU model: `Tesla T4` → `tesla-t4`.
pub fn slug(text: &str) -> String {
    let mut slug = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_without_nvidia_files_misses_driver_and_device() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/null"), b"").unwrap();
        let probe = GpuProbe::read_under(root.path());
        assert_eq!(probe.devices, 0);
        assert_eq!(probe.model, None);
        let missing = probe.missing();
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].contains("driver"));
        assert!(missing[1].contains("/dev/nvidia0"));
    }

    #[test]
    fn a_t4_node_is_read_from_proc_and_dev() {
        let root = tempfile::tempdir().unwrap();
        let gpu = root.path().join("proc/driver/nvidia/gpus/0000:00:1e.0");
        std::fs::create_dir_all(&gpu).unwrap();
        std::fs::write(
            root.path().join("proc/driver/nvidia/version"),
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05\nGCC version: 12\n",
        )
        .unwrap();
        std::fs::write(
            gpu.join("information"),
            "Model: \t\t Tesla T4\nIRQ: 36\nGPU UUID: GPU-1\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        for name in ["nvidia0", "nvidiactl", "nvidia-uvm"] {
            std::fs::write(root.path().join("dev").join(name), b"").unwrap();
        }
        let probe = GpuProbe::read_under(root.path());
        assert_eq!(probe.devices, 1);
        assert_eq!(probe.model.as_deref(), Some("Tesla T4"));
        assert!(probe.driver.unwrap().contains("580.95.05"));
        assert_eq!(slug("Tesla T4"), "tesla-t4");
        assert_eq!(slug("NVIDIA H200 (141GB)"), "nvidia-h200-141gb");
    }

    #[test]
    fn tensorrt_version_from_the_library_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = [PathBuf::from("/nonexistent"), dir.path().to_path_buf()];
        assert_eq!(tensorrt_version(&dirs), None);
        std::fs::write(dir.path().join("libnvinfer.so.10"), b"0123456789").unwrap();
        assert_eq!(tensorrt_version(&dirs).as_deref(), Some("10-10"));
        std::fs::write(dir.path().join("libnvinfer.so.10.13.0"), b"x").unwrap();
        assert_eq!(tensorrt_version(&dirs).as_deref(), Some("10.13.0"));
    }
}
