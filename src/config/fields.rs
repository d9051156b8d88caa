//! Reading parameters out of a keyed object, whatever its origin: a TOML table of the
//! listener file (snake_case keys, typed values, text positions) or a control-API call
//! (PascalCase keys, every value text). One validator serves both, so the ranges,
//! defaults and error codes cannot drift apart.

use super::error::{ConfigError, Span};
use std::fmt;

/// A parameter: its key in the listener file and its name in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub key: &'static str,
    pub api: &'static str,
}

/// A value as it was given.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw<'a> {
    Int(i64),
    Str(&'a str),
    /// Untyped text (API query parameters): numbers are parsed from it.
    Text(&'a str),
    Bool(bool),
    /// Anything else, by its type name ("float", "array", "table", ...).
    Other(&'static str),
}

impl fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Int(v) => write!(f, "{v}"),
            Raw::Str(s) => write!(f, "{s:?}"),
            Raw::Text(s) => write!(f, "{s:?}"),
            Raw::Bool(b) => write!(f, "{b}"),
            Raw::Other(kind) => write!(f, "a {kind}"),
        }
    }
}

/// One present parameter.
#[derive(Debug, Clone)]
pub struct Field<'a> {
    pub value: Raw<'a>,
    pub span: Span,
}

/// A keyed object to read parameters from.
pub trait Fields {
    /// The value of `param`, if present.
    fn field(&self, param: &Param) -> Option<Field<'_>>;
    /// Every key present, with its position, in order (to report unknown ones).
    fn keys(&self) -> Vec<(String, Span)>;
    /// Where the object starts (a `[[table]]` header): where a missing key is reported.
    fn span(&self) -> Span;
    /// How `param` is named in this kind of input (for "unknown key" matching).
    fn name_of(&self, param: &Param) -> &'static str;
}

/// A TOML table of the listener file.
pub struct TomlFields<'a>(pub &'a toml_edit::Table);

impl Fields for TomlFields<'_> {
    fn field(&self, param: &Param) -> Option<Field<'_>> {
        let item = self.0.get(param.key)?;
        let value = match item.as_value() {
            Some(toml_edit::Value::Integer(v)) => Raw::Int(*v.value()),
            Some(toml_edit::Value::String(s)) => Raw::Str(s.value()),
            Some(toml_edit::Value::Boolean(b)) => Raw::Bool(*b.value()),
            Some(other) => Raw::Other(other.type_name()),
            None => Raw::Other(item.type_name()),
        };
        Some(Field {
            value,
            span: item.span(),
        })
    }

    fn keys(&self) -> Vec<(String, Span)> {
        self.0
            .iter()
            .map(|(k, _)| (k.to_string(), self.0.key(k).and_then(|k| k.span())))
            .collect()
    }

    fn span(&self) -> Span {
        self.0.span()
    }

    fn name_of(&self, param: &Param) -> &'static str {
        param.key
    }
}

/// Reads parameters from one object, collecting every error instead of stopping at
/// the first, and remembers which keys were read so the rest can be reported as unknown.
pub struct Reader<'f, 'e, F: Fields> {
    fields: &'f F,
    errors: &'e mut Vec<ConfigError>,
    known: Vec<&'static str>,
}

impl<'f, 'e, F: Fields> Reader<'f, 'e, F> {
    pub fn new(fields: &'f F, errors: &'e mut Vec<ConfigError>) -> Self {
        Reader {
            fields,
            errors,
            known: Vec::new(),
        }
    }

    pub fn error(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    /// Where the object starts.
    pub fn span(&self) -> Span {
        self.fields.span()
    }

    /// The raw field, marking the key as known.
    pub fn field(&mut self, param: &Param) -> Option<Field<'f>> {
        self.known.push(self.fields.name_of(param));
        self.fields.field(param)
    }

    /// Whether the parameter is present (without marking it read).
    pub fn has(&self, param: &Param) -> bool {
        self.fields.field(param).is_some()
    }

    /// An integer in `range`; `None` (with an error recorded) when it is malformed,
    /// and `None` without error when it is absent.
    pub fn int(&mut self, param: &Param, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        let field = self.field(param)?;
        let value = match field.value {
            Raw::Int(v) => Some(v),
            Raw::Text(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match value {
            Some(v) if range.contains(&v) => Some(v),
            Some(v) => {
                let why = format!("{v} is not in {}..={}", range.start(), range.end());
                self.error(ConfigError::invalid(param.api, why, field.span));
                None
            }
            None => {
                let why = format!("expected an integer, found {}", field.value);
                self.error(ConfigError::invalid(param.api, why, field.span));
                None
            }
        }
    }

    /// A required integer in `range`: records `Missing<Param>` when absent.
    pub fn required_int(
        &mut self,
        param: &Param,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        if self.missing(param) {
            return None;
        }
        self.int(param, range)
    }

    /// An integer in `range`, or `default` when absent. Malformed: `None`.
    pub fn int_or(
        &mut self,
        param: &Param,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> Option<i64> {
        if self.fields.field(param).is_none() {
            self.known.push(self.fields.name_of(param));
            return Some(default);
        }
        self.int(param, range)
    }

    /// A string that passes `rule`; `None` when absent or malformed.
    pub fn string(
        &mut self,
        param: &Param,
        rule: impl Fn(&str) -> Result<(), String>,
    ) -> Option<String> {
        let field = self.field(param)?;
        match field.value {
            Raw::Str(s) | Raw::Text(s) => match rule(s) {
                Ok(()) => Some(s.to_string()),
                Err(why) => {
                    self.error(ConfigError::invalid(param.api, why, field.span));
                    None
                }
            },
            other => {
                let why = format!("expected a string, found {other}");
                self.error(ConfigError::invalid(param.api, why, field.span));
                None
            }
        }
    }

    /// A required string: records `Missing<Param>` when absent.
    pub fn required_string(
        &mut self,
        param: &Param,
        rule: impl Fn(&str) -> Result<(), String>,
    ) -> Option<String> {
        if self.missing(param) {
            return None;
        }
        self.string(param, rule)
    }

    /// Whether a required `param` is absent; if so, marks it known and records
    /// `Missing<Param>` where the object starts.
    fn missing(&mut self, param: &Param) -> bool {
        let absent = self.fields.field(param).is_none();
        if absent {
            self.known.push(self.fields.name_of(param));
            self.error(ConfigError::missing(param.api, self.fields.span()));
        }
        absent
    }

    /// One of `choices`, or `default` when absent; `None` when malformed.
    pub fn choice<T: Copy>(
        &mut self,
        param: &Param,
        choices: &[(&str, T)],
        default: T,
    ) -> Option<T> {
        let Some(field) = self.field(param) else {
            return Some(default);
        };
        let given = match field.value {
            Raw::Str(s) | Raw::Text(s) => s,
            other => {
                let why = format!("expected a string, found {other}");
                self.error(ConfigError::invalid(param.api, why, field.span));
                return None;
            }
        };
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == given) {
            return Some(*v);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let why = format!("{given:?} is not one of {}", names.join(", "));
        self.error(ConfigError::invalid(param.api, why, field.span));
        None
    }

    /// Reports every key that was never read as `InvalidParameter.<key>`.
    pub fn finish(self) {
        for (key, span) in self.fields.keys() {
            if !self.known.contains(&key.as_str()) {
                let message = format!("The parameter {key} is not recognized");
                let code = super::error::Code::UnknownParameter(key);
                self.errors.push(ConfigError::new(code, message, span));
            }
        }
    }
}
