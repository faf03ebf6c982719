//! Reading a file: UTF-8, TOML, then validation. Every error names the
//! file and the field.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use super::{validate::validate, Config};

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

/// Everything wrong with a file, reported together.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} problem(s)",
            self.file.display(),
            self.problems.len()
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {}: {}", self.file.display(), p.field, p.message)?;
        }
        Ok(())
    }
}

/// A valid configuration with its warnings.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    parse(path, &read_text(path)?)
}

/// The file as UTF-8 text; a file that is not says at which byte it stops.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    let problem = |message: String| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            field: "(file)".into(),
            message,
        }],
    };
    let bytes = std::fs::read(path).map_err(|e| problem(format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        problem(format!(
            "not UTF-8 at byte {at} (line {line}): save the file as UTF-8"
        ))
    })
}

pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| format!("line {}", text[..s.start].lines().count().max(1)))
            .unwrap_or_else(|| "(syntax)".into());
        ConfigError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                field: line,
                message: e.message().to_string(),
            }],
        }
    })?;
    validated(path, config)
}

/// `config`, read from `path`, if it passes validation.
pub fn validated(path: &Path, config: Config) -> Result<Loaded, ConfigError> {
    let (problems, warnings) = validate(&config);
    if problems.is_empty() {
        Ok(Loaded { config, warnings })
    } else {
        Err(ConfigError {
            file: path.to_path_buf(),
            problems,
        })
    }
}

/// it. Only regular files hold secrets (a test's `/dev/null` holds none).
pub fn others_can_read(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.permissions().mode() & 0o777;
    (meta.is_file() && mode & 0o044 != 0).then_some(mode)
}
