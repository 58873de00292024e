//! The in-memory product table.
//!
//! A `BTreeMap` keyed by SKU: listing is in SKU order, so a page token is
//! simply the last SKU of the previous page and paging stays stable while
//! products are added.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use mesh::proto::shop::catalog::v1::Product;

/// Most products one instance holds: keeps a runaway import from eating the
/// process's memory.
pub const MAX_PRODUCTS: usize = 100_000;

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The products, in SKU order.
    pub products: Vec<Product>,
    /// The SKU to continue after, if there are more products.
    pub next_after: Option<String>,
}

/// How an import changed the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpsertCounts {
    /// Products whose SKU was new.
    pub created: usize,
    /// Products that replaced an existing SKU.
    pub updated: usize,
}

/// An import would grow the table past [`MAX_PRODUCTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogFull;

/// The product table, shared by every request.
///
/// A std `Mutex`: every operation is a short map operation with no `.await`
/// inside, so an async lock would only add overhead (see tokio's "which kind
/// of mutex" guidance).
#[derive(Debug, Default)]
pub struct ProductStore {
    products: Mutex<BTreeMap<String, Product>>,
}

impl ProductStore {
    /// A store holding the [seed](crate::seed) products.
    pub fn seeded() -> Self {
        let store = Self::default();
        // The seed is far below the cap.
        let _ = store.upsert_all(crate::seed::products());
        store
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Product>> {
        // A panic while holding the lock cannot leave a map half-written
        // (every write is a single insert), so a poisoned lock is still usable.
        self.products.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The product with this SKU.
    pub fn get(&self, sku: &str) -> Option<Product> {
        self.lock().get(sku).cloned()
    }

    /// Up to `size` products with a SKU after `after` (from the start when
    /// `None`). `size` must be at least 1.
    pub fn page(&self, after: Option<&str>, size: usize) -> Page {
        let products = self.lock();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut range = products.range::<str, _>((start, Bound::Unbounded));
        let page: Vec<Product> = range.by_ref().take(size).map(|(_, p)| p.clone()).collect();
        let next_after = match (range.next(), page.last()) {
            (Some(_), Some(last)) => Some(last.sku.clone()),
            _ => None,
        };
        Page {
            products: page,
            next_after,
        }
    }

    /// Creates or replaces `products` (already validated), in order, all at
    /// once: either the whole import is applied or, if it would overflow the
    /// table, none of it.
    pub fn upsert_all(&self, products: Vec<Product>) -> Result<UpsertCounts, CatalogFull> {
        let mut table = self.lock();
        let new_skus: std::collections::BTreeSet<&str> = products
            .iter()
            .map(|p| p.sku.as_str())
            .filter(|sku| !table.contains_key(*sku))
            .collect();
        if table.len() + new_skus.len() > MAX_PRODUCTS {
            return Err(CatalogFull);
        }
        let mut counts = UpsertCounts::default();
        for product in products {
            match table.insert(product.sku.clone(), product) {
                None => counts.created += 1,
                Some(_) => counts.updated += 1,
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(sku: &str, price_minor: i64) -> Product {
        Product {
            sku: sku.into(),
            name: sku.into(),
            description: String::new(),
            price_minor,
            currency: "EUR".into(),
        }
    }

    fn skus(page: &Page) -> Vec<&str> {
        page.products.iter().map(|p| p.sku.as_str()).collect()
    }

    fn store_of(skus: &[&str]) -> ProductStore {
        let store = ProductStore::default();
        store
            .upsert_all(skus.iter().map(|s| product(s, 100)).collect())
            .expect("below cap");
        store
    }

    #[test]
    fn pages_walk_every_product_once_in_sku_order() {
        let store = store_of(&["d", "a", "c", "b", "e"]);
        let first = store.page(None, 2);
        assert_eq!(skus(&first), ["a", "b"]);
        assert_eq!(first.next_after.as_deref(), Some("b"));
        let second = store.page(first.next_after.as_deref(), 2);
        assert_eq!(skus(&second), ["c", "d"]);
        let third = store.page(second.next_after.as_deref(), 2);
        assert_eq!(skus(&third), ["e"]);
        assert_eq!(third.next_after, None);
    }

    #[test]
    fn exact_fit_has_no_next_page() {
        let store = store_of(&["a", "b"]);
        let page = store.page(None, 2);
        assert_eq!(skus(&page), ["a", "b"]);
        assert_eq!(page.next_after, None);
    }

    #[test]
    fn token_is_a_position_not_a_lookup() {
        let store = store_of(&["a", "c"]);
        assert_eq!(skus(&store.page(Some("b"), 10)), ["c"]);
        assert!(store.page(Some("z"), 10).products.is_empty());
    }

    #[test]
    fn upsert_counts_created_and_updated() {
        let store = store_of(&["a"]);
        let counts = store
            .upsert_all(vec![product("a", 5), product("b", 6), product("b", 7)])
            .expect("below cap");
        assert_eq!(
            counts,
            UpsertCounts {
                created: 1,
                updated: 2
            }
        );
        assert_eq!(store.get("a").map(|p| p.price_minor), Some(5));
        assert_eq!(store.get("b").map(|p| p.price_minor), Some(7));
    }

    #[test]
    fn seed_is_listed() {
        let store = ProductStore::seeded();
        let page = store.page(None, 500);
        assert_eq!(page.products.len(), crate::seed::products().len());
        assert!(store.get("sku-espresso-beans").is_some());
    }
}
