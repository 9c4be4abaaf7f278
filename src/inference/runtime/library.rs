//! Where the ONNX Runtime library is found. `build.rs` bundles the CPU library from PyPI and
//! records its path; settings and `ORT_DYLIB_PATH` override it.

use std::path::{Path, PathBuf};

/// The file name `build.rs` gives the bundled library, in its cache and beside the executable.
const BUNDLED_FILE: &str = env!("PLATESCORE_BUNDLED_ORT_FILE");

/// What to run when the library was not bundled.
pub const FIX: &str = "rebuild where PyPI is reachable with `cargo clean -p platescore && \
                       cargo build --release`, or set ORT_DYLIB_PATH to a libonnxruntime.so.1.x";

/// The library this process will load, and where that choice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrtLibrary {
    /// The `ort_library` setting.
    Configured(PathBuf),
    /// `ORT_DYLIB_PATH`.
    Environment(PathBuf),
    /// A copy beside the executable (how deployments ship it).
    BesideExecutable(PathBuf),
    /// The path `build.rs` recorded.
    Bundled(PathBuf),
    /// Nothing bundled: the dynamic loader's search path, which usually fails.
    LoaderSearch {
        name: &'static str,
        why_unbundled: String,
    },
}

impl OrtLibrary {
    /// Settings first, then `ORT_DYLIB_PATH`, then beside the executable, then the bundled
    /// path, then the loader's search path.
    pub fn locate(configured: Option<&Path>) -> Self {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join(BUNDLED_FILE)));
        Self::choose(
            configured,
            std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
            beside,
            bundled_library(),
        )
    }

    fn choose(
        configured: Option<&Path>,
        environment: Option<PathBuf>,
        beside_executable: Option<PathBuf>,
        bundled: Result<PathBuf, String>,
    ) -> Self {
        if let Some(path) = configured.filter(|p| !p.as_os_str().is_empty()) {
            return Self::Configured(path.to_path_buf());
        }
        if let Some(path) = environment.filter(|p| !p.as_os_str().is_empty()) {
            return Self::Environment(path);
        }
        if let Some(path) = beside_executable.filter(|p| p.is_file()) {
            return Self::BesideExecutable(path);
        }
        match bundled {
            Ok(path) => Self::Bundled(path),
            Err(why_unbundled) => Self::LoaderSearch {
                name: "libonnxruntime.so",
                why_unbundled,
            },
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::Configured(p)
            | Self::Environment(p)
            | Self::BesideExecutable(p)
            | Self::Bundled(p) => p.as_path(),
            Self::LoaderSearch { name, .. } => Path::new(name),
        }
    }

    /// Why loading failed, with what fixes it.
    pub fn explain_failure(&self, error: &str) -> String {
        let path = self.path().display();
        match self {
            Self::Configured(_) => format!("{path} (setting `ort_library`): {error}"),
            Self::Environment(_) => format!("{path} (ORT_DYLIB_PATH): {error}"),
            Self::BesideExecutable(_) => format!("{path} (beside the executable): {error}"),
            Self::Bundled(_) => format!("{path} (bundled at build time): {error}; {FIX}"),
            Self::LoaderSearch { why_unbundled, .. } => format!(
                "not bundled ({why_unbundled}) and not on the loader's path ({error}); {FIX}"
            ),
        }
    }
}

/// The library `build.rs` cached, if it did and the file is still there; else why not.
pub fn bundled_library() -> Result<PathBuf, String> {
    let recorded = env!("PLATESCORE_BUNDLED_ORT_LIBRARY");
    if recorded.is_empty() {
        return Err(env!("PLATESCORE_BUNDLED_ORT_NOTE").to_string());
    }
    let path = PathBuf::from(recorded);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("the build cached it at {recorded}, which is gone"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_then_environment_then_beside_the_executable_then_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let beside = dir.path().join(BUNDLED_FILE);
        let bundled = || Ok(PathBuf::from("/cache/lib.so"));
        let configured = Path::new("/opt/ort/libonnxruntime.so.1.31.1");
        let env = || Some(PathBuf::from("/env/libonnxruntime.so"));

        assert_eq!(
            OrtLibrary::choose(Some(configured), env(), Some(beside.clone()), bundled()),
            OrtLibrary::Configured(configured.into())
        );
        assert_eq!(
            OrtLibrary::choose(None, env(), Some(beside.clone()), bundled()),
            OrtLibrary::Environment("/env/libonnxruntime.so".into())
        );
        // Beside the executable only when the file is there.
        assert_eq!(
            OrtLibrary::choose(None, None, Some(beside.clone()), bundled()),
            OrtLibrary::Bundled("/cache/lib.so".into())
        );
        std::fs::write(&beside, b"").unwrap();
        assert_eq!(
            OrtLibrary::choose(None, Some(PathBuf::new()), Some(beside.clone()), bundled()),
            OrtLibrary::BesideExecutable(beside)
        );
    }

    #[test]
    fn without_a_bundle_the_failure_says_why_and_how_to_fix_it() {
        let chosen = OrtLibrary::choose(None, None, None, Err("offline build".into()));
        assert_eq!(chosen.path(), Path::new("libonnxruntime.so"));
        let message = chosen.explain_failure("cannot open shared object file");
        assert!(message.contains("offline build"), "{message}");
        assert!(message.contains("cargo build --release"), "{message}");
    }
}
