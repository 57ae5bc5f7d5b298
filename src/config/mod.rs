//! Configuration file (TOML) → validated [`crate::model::Model`]. STUB — being written.
use crate::model::Model;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

pub fn load_file(path: &Path, previous: Option<&Model>) -> Result<Model, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: path.display().to_string(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })?;
    parse(&text, &path.display().to_string(), previous)
}

pub fn parse(_text: &str, origin: &str, _previous: Option<&Model>) -> Result<Model, ConfigError> {
    Err(ConfigError {
        origin: origin.into(),
        line: 1,
        column: 1,
        message: "config parser not written yet".into(),
    })
}

pub fn render_check(model: &Model) -> String {
    format!("{model:#?}")
}
