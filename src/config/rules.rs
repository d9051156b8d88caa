//! Form rules for string parameters (beyond ranges), shared by the listener file and
//! the control API. Each returns the reason a value is refused.

use super::HttpCodes;

/// Longest description, health-check URI and domain, in characters.
pub const MAX_TEXT_CHARS: usize = 80;
/// Longest id (load balancer, server, access key), in characters.
pub const MAX_ID_CHARS: usize = 64;

fn length(s: &str, max: usize) -> Result<usize, String> {
    let n = s.chars().count();
    if n == 0 || n > max {
        return Err(format!("must be 1..={max} characters, found {n}"));
    }
    Ok(n)
}

/// 1..=80 characters, not starting with `http://` or `https://`.
pub fn description(s: &str) -> Result<(), String> {
    length(s, MAX_TEXT_CHARS)?;
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(format!("{s:?} must not start with http:// or https://"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// 1..=80 characters, starting with `/`, not only `/`; printable ASCII without spaces,
/// since it goes verbatim into an HTTP request line.
pub fn health_check_uri(s: &str) -> Result<(), String> {
    length(s, MAX_TEXT_CHARS)?;
    if !s.starts_with('/') {
        return Err(format!("{s:?} must start with /"));
    }
    if s == "/" {
        return Err("must not be only /".into());
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{s:?} contains {c:?}; use printable ASCII without spaces"
        ));
    }
    Ok(())
}

/// A host name: letters, digits, `-` and `.`, 1..=80 characters.
pub fn health_check_domain(s: &str) -> Result<(), String> {
    length(s, MAX_TEXT_CHARS)?;
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "{s:?} contains {c:?}; use letters, digits, - and ."
        ));
    }
    Ok(())
}

/// 1..=64 printable characters without spaces.
pub fn id(s: &str) -> Result<(), String> {
    length(s, MAX_ID_CHARS)?;
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{s:?} must not contain spaces or control characters"
        ));
    }
    Ok(())
}

/// A comma-separated subset of `http_2xx,http_3xx,http_4xx,http_5xx`.
pub fn http_codes(s: &str) -> Result<HttpCodes, String> {
    let mut codes = HttpCodes::EMPTY;
    for item in s.split(',') {
        let class = match item.trim() {
            "http_2xx" => 2,
            "http_3xx" => 3,
            "http_4xx" => 4,
            "http_5xx" => 5,
            other => {
                return Err(format!(
                    "{other:?} is not one of http_2xx, http_3xx, http_4xx, http_5xx"
                ))
            }
        };
        codes = codes.with_class(class);
    }
    Ok(codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_rules() {
        assert!(description("web").is_ok());
        assert!(description(&"x".repeat(80)).is_ok());
        assert!(
            description(&"é".repeat(80)).is_ok(),
            "counts characters, not bytes"
        );
        assert!(description(&"x".repeat(81)).is_err());
        assert!(description("").is_err());
        assert!(description("http://web").is_err());
        assert!(description("HTTPS://web").is_err());
        assert!(description("web http://").is_ok());
    }

    #[test]
    fn uri_rules() {
        assert!(health_check_uri("/checkpreload.htm").is_ok());
        assert!(health_check_uri("/a?b=c&d=%20").is_ok());
        assert!(health_check_uri("/").is_err());
        assert!(health_check_uri("check").is_err());
        assert!(health_check_uri("").is_err());
        assert!(health_check_uri("/a b").is_err());
        assert!(health_check_uri("/a\r\nX: y").is_err());
        assert!(health_check_uri(&format!("/{}", "x".repeat(79))).is_ok());
        assert!(health_check_uri(&format!("/{}", "x".repeat(80))).is_err());
    }

    #[test]
    fn domain_rules() {
        assert!(health_check_domain("www.example.com").is_ok());
        assert!(health_check_domain("a-b.c1").is_ok());
        assert!(health_check_domain("a_b").is_err());
        assert!(health_check_domain("a b").is_err());
        assert!(health_check_domain("").is_err());
        assert!(health_check_domain(&"a".repeat(81)).is_err());
    }

    #[test]
    fn id_rules() {
        assert!(id("lb-5ovkn1piwqmoqrfjdyhq4").is_ok());
        assert!(id(&"x".repeat(64)).is_ok());
        assert!(id(&"x".repeat(65)).is_err());
        assert!(id("").is_err());
        assert!(id("a b").is_err());
        assert!(id("a\tb").is_err());
    }

    #[test]
    fn http_code_rules() {
        assert_eq!(http_codes("http_2xx").map(|c| c.bits()), Ok(0b0000_0100));
        let all = http_codes("http_2xx,http_3xx,http_4xx,http_5xx").map(|c| c.bits());
        assert_eq!(all, Ok(0b0011_1100));
        assert!(http_codes("http_2xx,").is_err());
        assert!(http_codes("").is_err());
        assert!(http_codes("http_1xx").is_err());
        assert!(http_codes("200").is_err());
    }
}
