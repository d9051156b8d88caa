//! Configuration errors: an API error code, a message and where in the file it happened.

use super::ListenerKey;
use std::fmt;
use std::ops::Range;

/// A byte range in the source text (TOML file); `None` when the input has no text
/// positions (a control-API call).
pub type Span = Option<Range<usize>>;

/// The API's error codes. `Missing`/`Invalid` carry the parameter's API (PascalCase)
/// name, so `Invalid("ListenerPort")` prints as `InvalidListenerPort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// A required parameter is absent: `Missing<Param>`.
    Missing(&'static str),
    /// Wrong type, out of range or bad form: `Invalid<Param>`.
    Invalid(&'static str),
    /// An unknown key: `InvalidParameter.<key>`.
    UnknownParameter(String),
    /// The file is not valid TOML (the API has no code of its own for this; the
    /// generic `InvalidParameter` is the closest).
    Syntax,
    /// A listener names a load balancer that is not declared.
    LoadBalancerNotFound,
    /// Two listeners with the same load balancer and port.
    ListenerAlreadyExists,
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Code::Missing(param) => write!(f, "Missing{param}"),
            Code::Invalid(param) => write!(f, "Invalid{param}"),
            Code::UnknownParameter(key) => write!(f, "InvalidParameter.{key}"),
            Code::Syntax => f.write_str("InvalidParameter"),
            Code::LoadBalancerNotFound => f.write_str("LoadBalancerNotFound"),
            Code::ListenerAlreadyExists => f.write_str("ListenerAlreadyExists"),
        }
    }
}

/// One validation error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub code: Code,
    pub message: String,
    pub span: Span,
}

impl ConfigError {
    pub fn new(code: Code, message: impl Into<String>, span: Span) -> Self {
        ConfigError {
            code,
            message: message.into(),
            span,
        }
    }

    /// The message in the API's style for a bad parameter value:
    /// `The specified parameter ListenerPort is invalid: 70000 is not in 1..=65535`.
    pub fn invalid(param: &'static str, why: impl fmt::Display, span: Span) -> Self {
        let message = format!("The specified parameter {param} is invalid: {why}");
        ConfigError::new(Code::Invalid(param), message, span)
    }

    pub fn missing(param: &'static str, span: Span) -> Self {
        let message = format!("The parameter {param} is required");
        ConfigError::new(Code::Missing(param), message, span)
    }

    /// A listener names a load balancer that does not exist (in the file or a call).
    pub fn load_balancer_not_found(load_balancer_id: &str, span: Span) -> Self {
        let message = format!("The specified load balancer {load_balancer_id:?} does not exist");
        ConfigError::new(Code::LoadBalancerNotFound, message, span)
    }

    /// A second listener with the key of one that exists.
    pub fn listener_exists(key: &ListenerKey, span: Span) -> Self {
        let message = format!(
            "A listener on port {} of {} already exists",
            key.listener_port, key.load_balancer_id
        );
        ConfigError::new(Code::ListenerAlreadyExists, message, span)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line and column (in characters) of a byte offset in `src`.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// All the errors of one file, printable one per line as `FILE:LINE:COLUMN: CODE: MESSAGE`.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub file: String,
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl Diagnostics {
    /// The lines to print, in file order.
    pub fn lines(&self) -> Vec<String> {
        self.errors
            .iter()
            .map(|e| {
                let (line, col) = e
                    .span
                    .as_ref()
                    .map_or((1, 1), |s| line_col(&self.source, s.start));
                format!("{}:{line}:{col}: {e}", self.file)
            })
            .collect()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines().iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(line)?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_print_as_the_api_spells_them() {
        assert_eq!(
            Code::Missing("HealthCheckURI").to_string(),
            "MissingHealthCheckURI"
        );
        assert_eq!(
            Code::Invalid("ListenerPort").to_string(),
            "InvalidListenerPort"
        );
        assert_eq!(
            Code::UnknownParameter("foo".into()).to_string(),
            "InvalidParameter.foo"
        );
    }

    #[test]
    fn line_col_counts_characters_from_one() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_col(src, 11), (2, 5));
        assert_eq!(line_col(src, 10_000), (3, 1));
    }
}
