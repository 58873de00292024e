//! Pricing an order from catalog products: one currency for the whole
//! order, and a total that cannot overflow.

use std::fmt;

use mesh::proto::shop::catalog::v1::Product;
use mesh::proto::shop::orders::v1::{OrderItem, OrderLine};
use tonic::Status;

/// An order's lines with their prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// One item per line, in line order.
    pub items: Vec<OrderItem>,
    /// Sum of quantity times unit price, in minor units.
    pub total_minor: i64,
    /// The one currency of every line.
    pub currency: String,
}

/// Why an order cannot be priced from what the catalog returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PricingError {
    /// Lines are priced in different currencies; the shop charges one.
    MixedCurrencies(String, String),
    /// The catalog answered with something that is not a usable price.
    BadPrice(String),
    /// The total does not fit in an `i64`.
    Overflow,
}

impl fmt::Display for PricingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MixedCurrencies(a, b) => {
                write!(f, "lines are priced in different currencies ({a} and {b})")
            }
            Self::BadPrice(sku) => write!(f, "the catalog has no usable price for {sku}"),
            Self::Overflow => write!(f, "the order total is too large"),
        }
    }
}

impl From<PricingError> for Status {
    fn from(e: PricingError) -> Self {
        Status::failed_precondition(e.to_string())
    }
}

/// Prices `lines` with `products` (the catalog's answer for each line, in
/// the same order).
pub fn price(lines: &[OrderLine], products: &[Product]) -> Result<Priced, PricingError> {
    if let Some(unpriced) = lines.get(products.len()) {
        return Err(PricingError::BadPrice(unpriced.sku.clone()));
    }
    let mut currency: Option<&str> = None;
    let mut total_minor: i64 = 0;
    let mut items = Vec::with_capacity(lines.len());
    for (line, product) in lines.iter().zip(products) {
        if product.sku != line.sku || product.price_minor < 0 || product.currency.is_empty() {
            return Err(PricingError::BadPrice(line.sku.clone()));
        }
        match currency {
            None => currency = Some(&product.currency),
            Some(c) if c != product.currency => {
                return Err(PricingError::MixedCurrencies(
                    c.to_owned(),
                    product.currency.clone(),
                ))
            }
            Some(_) => {}
        }
        total_minor = product
            .price_minor
            .checked_mul(i64::from(line.quantity))
            .and_then(|line_total| total_minor.checked_add(line_total))
            .ok_or(PricingError::Overflow)?;
        items.push(OrderItem {
            sku: line.sku.clone(),
            name: product.name.clone(),
            quantity: line.quantity,
            unit_price_minor: product.price_minor,
        });
    }
    Ok(Priced {
        items,
        total_minor,
        currency: currency.unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: i32) -> OrderLine {
        OrderLine {
            sku: sku.into(),
            quantity,
        }
    }

    fn product(sku: &str, price_minor: i64, currency: &str) -> Product {
        Product {
            sku: sku.into(),
            name: format!("{sku} name"),
            description: String::new(),
            price_minor,
            currency: currency.into(),
        }
    }

    #[test]
    fn sums_quantity_times_price() {
        let priced = price(
            &[line("a", 2), line("b", 3)],
            &[product("a", 250, "EUR"), product("b", 100, "EUR")],
        )
        .expect("priceable");
        assert_eq!(priced.total_minor, 800);
        assert_eq!(priced.currency, "EUR");
        assert_eq!(priced.items[1].name, "b name");
        assert_eq!(priced.items[1].unit_price_minor, 100);
    }

    #[test]
    fn one_currency_per_order() {
        assert_eq!(
            price(
                &[line("a", 1), line("b", 1)],
                &[product("a", 1, "EUR"), product("b", 1, "USD")]
            ),
            Err(PricingError::MixedCurrencies("EUR".into(), "USD".into()))
        );
    }

    #[test]
    fn refuses_bad_prices_and_overflow() {
        assert_eq!(
            price(&[line("a", 1)], &[product("a", -1, "EUR")]),
            Err(PricingError::BadPrice("a".into()))
        );
        assert_eq!(
            price(&[line("a", 1)], &[product("x", 1, "EUR")]),
            Err(PricingError::BadPrice("a".into()))
        );
        assert_eq!(
            price(&[line("a", 2)], &[product("a", i64::MAX, "EUR")]),
            Err(PricingError::Overflow)
        );
        assert!(price(&[line("a", 1), line("b", 1)], &[product("a", 1, "EUR")]).is_err());
    }
}
