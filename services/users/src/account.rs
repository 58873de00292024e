//! What makes a registration valid: the email, the password and the display
//! name, checked before any hashing so a bad request costs nothing.

/// Longest email accepted: the SMTP path limit (RFC 5321 §4.5.3.1.3 allows
/// 256 octets including the angle brackets).
pub const MAX_EMAIL_LEN: usize = 254;
/// Shortest password accepted (NIST SP 800-63B §5.1.1.2: at least 8).
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password accepted: long passphrases are welcome, but argon2's
/// cost grows with the input and a request is not a place for megabytes.
pub const MAX_PASSWORD_LEN: usize = 128;
/// Longest display name accepted, in characters.
pub const MAX_DISPLAY_NAME_LEN: usize = 100;

/// A field that failed validation, and why. Mapped to INVALID_ARGUMENT at
/// the gRPC edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The proto field name.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

/// The email as the store keys it: trimmed and lowercased, so
/// `Ann@Example.com` and `ann@example.com` are one account.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Checks an (already normalized) email's shape: `local@domain`, both
/// parts non-empty, no spaces or control characters, at most
/// [`MAX_EMAIL_LEN`] bytes. Whether the mailbox exists is not ours to know.
pub fn validate_email(email: &str) -> Result<(), InvalidField> {
    if email.is_empty() {
        return Err(invalid("email", "must not be empty"));
    }
    if email.len() > MAX_EMAIL_LEN {
        return Err(invalid(
            "email",
            format!("longer than {MAX_EMAIL_LEN} bytes"),
        ));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "email",
            "must not contain spaces or control characters",
        ));
    }
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(())
        }
        _ => Err(invalid(
            "email",
            "must look like name@domain (one @, text on both sides)",
        )),
    }
}

/// Checks a password's length: [`MIN_PASSWORD_LEN`] to
/// [`MAX_PASSWORD_LEN`] bytes. The message says the bounds, never the
/// password.
pub fn validate_password(password: &str) -> Result<(), InvalidField> {
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.len()) {
        return Err(invalid(
            "password",
            format!("must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} bytes long"),
        ));
    }
    Ok(())
}

/// Checks a display name: at most [`MAX_DISPLAY_NAME_LEN`] characters, no
/// control characters (it ends up in logs and web pages).
pub fn validate_display_name(name: &str) -> Result<(), InvalidField> {
    if name.chars().count() > MAX_DISPLAY_NAME_LEN {
        return Err(invalid(
            "display_name",
            format!("longer than {MAX_DISPLAY_NAME_LEN} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(
            "display_name",
            "must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(normalize_email("  Ann@Example.COM "), "ann@example.com");
        assert_eq!(validate_email("ann@example.com"), Ok(()));
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@",
            "a@b@c",
            "an n@example.com",
        ] {
            assert_eq!(
                validate_email(bad).map_err(|e| e.field),
                Err("email"),
                "{bad:?}"
            );
        }
        let long = format!("{}@example.com", "a".repeat(MAX_EMAIL_LEN));
        assert!(validate_email(&long).unwrap_err().reason.contains("254"));
    }

    #[test]
    fn passwords_have_bounds_and_the_message_says_them() {
        assert_eq!(validate_password("12345678"), Ok(()));
        assert_eq!(validate_password(&"x".repeat(MAX_PASSWORD_LEN)), Ok(()));
        let short = validate_password("1234567").unwrap_err();
        assert_eq!(short.to_string(), "password: must be 8 to 128 bytes long");
        assert!(validate_password(&"x".repeat(MAX_PASSWORD_LEN + 1)).is_err());
    }

    #[test]
    fn display_names_are_bounded() {
        assert_eq!(validate_display_name(""), Ok(()));
        assert_eq!(validate_display_name("Ann Example"), Ok(()));
        assert!(validate_display_name(&"é".repeat(MAX_DISPLAY_NAME_LEN + 1)).is_err());
        assert!(validate_display_name("line\nbreak").is_err());
    }
}
