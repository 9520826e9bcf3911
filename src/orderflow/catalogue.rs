//! Products, and the seed's demo catalogue (SEED_SPEC §1.14): four products in
//! stores X, Y and Z, priced at 99.00 USD each as the seed's front end did.

use serde::{Deserialize, Serialize};

use super::money::{Currency, Money};
use crate::event::TenantId;

/// A product of one store's catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Unique within the store, e.g. `prod-x-001`.
    pub id: String,
    /// Unique within the store, e.g. `Motia Smartwatch V2`.
    pub name: String,
    /// The unit price the store charges; orders are priced from it, never from
    /// the client.
    pub price: Money,
    /// Below this many units in stock, a low-stock alert is raised.
    pub threshold: u32,
}

/// A product with the stock it starts with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedProduct {
    /// The product.
    pub product: Product,
    /// Units in stock when first seeded.
    pub stock: u32,
}

/// One store's part of the demo catalogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedStore {
    /// The store (tenant).
    pub store: TenantId,
    /// Its products, in catalogue order.
    pub products: Vec<SeedProduct>,
}

/// The seed's products: (name, low-stock threshold).
const PRODUCTS: [(&str, u32); 4] = [
    ("Motia Smartwatch V2", 15),
    ("Motia IoT Sensor Kit", 10),
    ("Motia Pro Headset", 20),
    ("Motia AI Dev Board", 5),
];

/// Starting stock per store, in `PRODUCTS` order.
const STOCK: [(&str, [u32; 4]); 3] = [
    ("X", [50, 30, 25, 15]),
    ("Y", [35, 18, 12, 9]),
    ("Z", [70, 45, 33, 22]),
];

/// The demo price of every product: 99.00 USD.
pub const DEMO_PRICE: Money = Money::new(9_900, Currency::USD);

/// The seed's demo catalogue: stores X, Y and Z with four products each.
///
/// ```
/// let stores = flowline::orderflow::demo_catalogue();
/// assert_eq!(stores.len(), 3);
/// assert_eq!(stores[0].products[0].product.id, "prod-x-001");
/// assert_eq!(stores[0].products[0].stock, 50);
/// ```
pub fn demo_catalogue() -> Vec<SeedStore> {
    STOCK
        .iter()
        .filter_map(|(store, stock)| {
            let tenant = TenantId::new(*store).ok()?;
            let products = PRODUCTS
                .iter()
                .zip(stock)
                .enumerate()
                .map(|(i, ((name, threshold), stock))| SeedProduct {
                    product: Product {
                        id: format!("prod-{}-{:03}", store.to_lowercase(), i + 1),
                        name: (*name).to_string(),
                        price: DEMO_PRICE,
                        threshold: *threshold,
                    },
                    stock: *stock,
                })
                .collect();
            Some(SeedStore {
                store: tenant,
                products,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_catalogue_matches_the_seed() {
        let stores = demo_catalogue();
        let names: Vec<&str> = stores.iter().map(|s| s.store.as_str()).collect();
        assert_eq!(names, ["X", "Y", "Z"]);
        let y = &stores[1];
        let stock: Vec<u32> = y.products.iter().map(|p| p.stock).collect();
        assert_eq!(stock, [35, 18, 12, 9]);
        let devboard = &y.products[3].product;
        assert_eq!(devboard.id, "prod-y-004");
        assert_eq!(devboard.name, "Motia AI Dev Board");
        assert_eq!(devboard.threshold, 5);
        assert_eq!(devboard.price.to_string(), "99.00 USD");
    }
}
