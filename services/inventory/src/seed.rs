//! The SKUs every inventory instance stocks at start-up: the same SKUs the
//! catalog seeds (services/catalog/src/seed.rs), so a fresh mesh can take
//! orders at once. Keep the two lists in step.

/// The seed SKUs.
pub const SKUS: &[&str] = &[
    "sku-espresso-beans",
    "sku-filter-papers",
    "sku-ceramic-mug",
    "sku-burr-grinder",
    "sku-milk-frother",
    "sku-pour-over-kettle",
];
