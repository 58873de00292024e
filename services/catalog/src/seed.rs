//! The products every catalog instance starts with. Inventory seeds stock
//! for the same SKUs, so a fresh mesh can take orders at once.

use mesh::proto::shop::catalog::v1::Product;

/// `(sku, name, description, price in euro cents)`.
const PRODUCTS: &[(&str, &str, &str, i64)] = &[
    (
        "sku-espresso-beans",
        "Espresso beans, 1 kg",
        "Dark roast blend of Brazilian and Ethiopian beans.",
        2_490,
    ),
    (
        "sku-filter-papers",
        "Filter papers (100)",
        "Unbleached paper filters, size 02.",
        450,
    ),
    (
        "sku-ceramic-mug",
        "Ceramic mug",
        "Hand-glazed 300 ml mug.",
        1_290,
    ),
    (
        "sku-burr-grinder",
        "Burr grinder",
        "Conical steel burrs, 40 grind settings.",
        14_900,
    ),
    (
        "sku-milk-frother",
        "Milk frother",
        "Electric frother for hot and cold foam.",
        3_990,
    ),
    (
        "sku-pour-over-kettle",
        "Pour-over kettle",
        "1 l gooseneck kettle with thermometer.",
        5_900,
    ),
];

/// The seed products, priced in EUR.
pub fn products() -> Vec<Product> {
    PRODUCTS
        .iter()
        .map(|&(sku, name, description, price_minor)| Product {
            sku: sku.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            price_minor,
            currency: "EUR".to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seed_products_are_valid() {
        for product in super::products() {
            assert_eq!(
                crate::product::validate(&product),
                Ok(()),
                "{}",
                product.sku
            );
        }
    }
}
