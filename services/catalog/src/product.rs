//! What makes a product valid. Checked on every write so the table only ever
//! holds products that orders can price and sum safely.

use mesh::proto::shop::catalog::v1::Product;

/// Longest SKU accepted: SKUs travel in metadata-sized places (logs, ids of
/// other services), so they stay short.
pub const MAX_SKU_LEN: usize = 64;
/// Longest product name accepted.
pub const MAX_NAME_LEN: usize = 200;
/// Longest description accepted.
pub const MAX_DESCRIPTION_LEN: usize = 4_000;
/// Highest unit price accepted (10 million units of the currency): far above
/// any real product, low enough that orders' `quantity * price` sums cannot
/// overflow an `i64`.
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000;

/// A field that failed validation, and why. Mapped to INVALID_ARGUMENT at
/// the gRPC edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// The proto field name.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for InvalidField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

/// Checks a SKU: 1 to [`MAX_SKU_LEN`] printable ASCII characters, no spaces.
/// `field` names the field in the error (SKUs arrive in several messages).
pub fn validate_sku(field: &'static str, sku: &str) -> Result<(), InvalidField> {
    if sku.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if sku.len() > MAX_SKU_LEN {
        return Err(invalid(
            field,
            format!("longer than {MAX_SKU_LEN} characters"),
        ));
    }
    if !sku.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(field, "must be printable ASCII without spaces"));
    }
    Ok(())
}

/// Checks an ISO 4217 code's shape: three uppercase ASCII letters.
pub fn validate_currency(currency: &str) -> Result<(), InvalidField> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(invalid(
            "currency",
            format!("{currency:?} is not an ISO 4217 code (three uppercase letters)"),
        ))
    }
}

/// Checks every field of a product.
pub fn validate(product: &Product) -> Result<(), InvalidField> {
    validate_sku("sku", &product.sku)?;
    if product.name.chars().count() > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("longer than {MAX_NAME_LEN} characters"),
        ));
    }
    if product.description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(invalid(
            "description",
            format!("longer than {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    if !(0..=MAX_PRICE_MINOR).contains(&product.price_minor) {
        return Err(invalid(
            "price_minor",
            format!("{} is outside 0..={MAX_PRICE_MINOR}", product.price_minor),
        ));
    }
    validate_currency(&product.currency)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(sku: &str, price_minor: i64, currency: &str) -> Product {
        Product {
            sku: sku.into(),
            name: "Thing".into(),
            description: String::new(),
            price_minor,
            currency: currency.into(),
        }
    }

    #[test]
    fn accepts_a_plain_product() {
        assert_eq!(validate(&product("sku-a", 0, "EUR")), Ok(()));
    }

    #[test]
    fn names_the_bad_field() {
        let field = |p: Product| validate(&p).unwrap_err().field;
        assert_eq!(field(product("", 1, "EUR")), "sku");
        assert_eq!(field(product(&"x".repeat(65), 1, "EUR")), "sku");
        assert_eq!(field(product("has space", 1, "EUR")), "sku");
        assert_eq!(field(product("sku-a", -1, "EUR")), "price_minor");
        assert_eq!(field(product("sku-a", 1, "eur")), "currency");
        assert_eq!(field(product("sku-a", 1, "EURO")), "currency");
    }

    #[test]
    fn sku_of_max_length_is_fine() {
        assert!(validate_sku("sku", &"x".repeat(MAX_SKU_LEN)).is_ok());
    }
}
