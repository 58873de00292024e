//! The payments recorded and the idempotency keys that lead to them. Pure
//! bookkeeping (no I/O), so every rule is a plain unit test.
//!
//! A charge key is used at most once: it either names the payment it made
//! or, once a refund by that key found no charge, is *voided*, so a charge
//! still in flight (its answer lost, its retry late) cannot take money for an
//! order that was already cancelled.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// Most charge keys (payments and voided keys) remembered. Past this the
/// oldest are forgotten with their payments: a demo keeps no books forever.
pub const MAX_KEYS: usize = 100_000;

/// A payment as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// Our id for it.
    pub id: String,
    /// Who paid.
    pub customer_id: String,
    /// What it pays for (e.g. the order id).
    pub reference: String,
    /// Amount in minor units, positive.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Whether the whole amount went back.
    pub refunded: bool,
}

/// A validated charge request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Makes the charge idempotent.
    pub idempotency_key: String,
    /// Who pays.
    pub customer_id: String,
    /// What for.
    pub reference: String,
    /// Positive amount in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// Which payment a refund is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundTarget {
    /// By payment id.
    Payment(String),
    /// The payment made by the charge with this idempotency key.
    ChargeKey(String),
}

/// Why the ledger refused. Nothing changed when one is returned, except
/// that [`LedgerError::NoCharge`] voids the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerError {
    /// The charge key was used for a charge with other terms.
    ChargeKeyReused(String),
    /// The charge key was voided by a refund before any charge used it.
    ChargeKeyVoided(String),
    /// The refund key was used to refund another payment.
    RefundKeyReused(String),
    /// No payment with this id.
    UnknownPayment(String),
    /// No charge was made with this key (and now none can be).
    NoCharge(String),
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ChargeKeyReused(key) => write!(
                f,
                "idempotency_key {key} was already used for a charge with a different customer, amount or currency"
            ),
            Self::ChargeKeyVoided(key) => write!(
                f,
                "idempotency_key {key} was voided by a refund before any charge; use a new key"
            ),
            Self::RefundKeyReused(key) => {
                write!(f, "idempotency_key {key} was already used to refund another payment")
            }
            Self::UnknownPayment(id) => write!(f, "payment {id} not found"),
            Self::NoCharge(key) => write!(f, "no charge was made with idempotency key {key}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyUse {
    /// The key made this payment.
    Charged(String),
    /// A refund by this key found no charge: no charge may use it now.
    Voided,
}

#[derive(Debug, Default)]
struct State {
    payments: HashMap<String, Payment>,
    charge_keys: HashMap<String, KeyUse>,
    /// Refund key -> the payment it refunded.
    refund_keys: HashMap<String, String>,
    /// Payment id -> the refund key that refunded it (the reverse of
    /// `refund_keys`, to forget both together).
    refunded_by: HashMap<String, String>,
    /// Charge keys, oldest first, for forgetting past the cap.
    age: VecDeque<String>,
}

impl State {
    /// Records a new charge key and forgets the oldest past [`MAX_KEYS`].
    fn remember(&mut self, key: String, used: KeyUse) {
        self.charge_keys.insert(key.clone(), used);
        self.age.push_back(key);
        while self.age.len() > MAX_KEYS {
            let Some(oldest) = self.age.pop_front() else {
                break;
            };
            if let Some(KeyUse::Charged(id)) = self.charge_keys.remove(&oldest) {
                self.payments.remove(&id);
                if let Some(refund_key) = self.refunded_by.remove(&id) {
                    self.refund_keys.remove(&refund_key);
                }
            }
        }
    }
}

/// Every payment, shared by every request.
///
/// A std `Mutex`: each operation is a few map lookups with no `.await`
/// inside (the drill's sleep happens before the lock is taken).
#[derive(Debug, Default)]
pub struct Ledger {
    state: Mutex<State>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation checks first and writes after with nothing that can
        // panic in between: a poisoned lock still guards consistent books.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The payment with this id.
    pub fn get(&self, payment_id: &str) -> Option<Payment> {
        self.lock().payments.get(payment_id).cloned()
    }

    /// Charges, or returns the payment an earlier charge with the same key
    /// made (`bool`: whether this call made it).
    pub fn charge(&self, charge: Charge) -> Result<(Payment, bool), LedgerError> {
        let mut state = self.lock();
        match state.charge_keys.get(&charge.idempotency_key) {
            Some(KeyUse::Voided) => {
                return Err(LedgerError::ChargeKeyVoided(charge.idempotency_key))
            }
            Some(KeyUse::Charged(id)) => {
                let Some(payment) = state.payments.get(id) else {
                    // Keys and payments are forgotten together; unreachable.
                    return Err(LedgerError::UnknownPayment(id.clone()));
                };
                let same = payment.amount_minor == charge.amount_minor
                    && payment.currency == charge.currency
                    && payment.customer_id == charge.customer_id;
                return if same {
                    Ok((payment.clone(), false))
                } else {
                    Err(LedgerError::ChargeKeyReused(charge.idempotency_key))
                };
            }
            None => {}
        }
        let id = loop {
            let id = format!("pay-{:012x}", rand::random::<u64>() >> 16);
            if !state.payments.contains_key(&id) {
                break id;
            }
        };
        let payment = Payment {
            id: id.clone(),
            customer_id: charge.customer_id,
            reference: charge.reference,
            amount_minor: charge.amount_minor,
            currency: charge.currency,
            refunded: false,
        };
        state.payments.insert(id.clone(), payment.clone());
        state.remember(charge.idempotency_key, KeyUse::Charged(id));
        Ok((payment, true))
    }

    /// Refunds a whole payment; refunding a refunded payment returns it
    /// (`bool`: whether this call refunded it). A refund by charge key that
    /// finds no charge voids the key.
    pub fn refund(
        &self,
        target: RefundTarget,
        refund_key: Option<&str>,
    ) -> Result<(Payment, bool), LedgerError> {
        let mut state = self.lock();
        let id = match target {
            RefundTarget::Payment(id) => id,
            RefundTarget::ChargeKey(key) => match state.charge_keys.get(&key) {
                Some(KeyUse::Charged(id)) => id.clone(),
                Some(KeyUse::Voided) => return Err(LedgerError::NoCharge(key)),
                None => {
                    state.remember(key.clone(), KeyUse::Voided);
                    return Err(LedgerError::NoCharge(key));
                }
            },
        };
        if let Some(key) = refund_key {
            if state
                .refund_keys
                .get(key)
                .is_some_and(|refunded| *refunded != id)
            {
                return Err(LedgerError::RefundKeyReused(key.to_owned()));
            }
        }
        let State {
            payments,
            refund_keys,
            refunded_by,
            ..
        } = &mut *state;
        let payment = payments
            .get_mut(&id)
            .ok_or_else(|| LedgerError::UnknownPayment(id.clone()))?;
        if payment.refunded {
            return Ok((payment.clone(), false));
        }
        payment.refunded = true;
        if let Some(key) = refund_key {
            refund_keys.insert(key.to_owned(), id.clone());
            refunded_by.insert(id, key.to_owned());
        }
        Ok((payment.clone(), true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(key: &str, amount_minor: i64) -> Charge {
        Charge {
            idempotency_key: key.into(),
            customer_id: "cus-1".into(),
            reference: "ord-1".into(),
            amount_minor,
            currency: "EUR".into(),
        }
    }

    #[test]
    fn charge_is_idempotent_by_key() {
        let ledger = Ledger::default();
        let (first, made) = ledger.charge(charge("k1", 500)).expect("new key");
        assert!(made);
        assert!(
            first.id.starts_with("pay-") && first.id.len() == 16,
            "{}",
            first.id
        );
        let (again, made) = ledger.charge(charge("k1", 500)).expect("same charge");
        assert!(!made);
        assert_eq!(again, first);
        let (other, _) = ledger.charge(charge("k2", 500)).expect("new key");
        assert_ne!(other.id, first.id);
    }

    #[test]
    fn same_key_different_terms_is_refused() {
        let ledger = Ledger::default();
        ledger.charge(charge("k1", 500)).expect("new key");
        assert_eq!(
            ledger.charge(charge("k1", 501)),
            Err(LedgerError::ChargeKeyReused("k1".into()))
        );
        let mut usd = charge("k1", 500);
        usd.currency = "USD".into();
        assert_eq!(
            ledger.charge(usd),
            Err(LedgerError::ChargeKeyReused("k1".into()))
        );
    }

    #[test]
    fn refund_by_id_is_idempotent() {
        let ledger = Ledger::default();
        let (paid, _) = ledger.charge(charge("k1", 500)).expect("new key");
        let (refunded, did) = ledger
            .refund(RefundTarget::Payment(paid.id.clone()), None)
            .expect("known payment");
        assert!(did && refunded.refunded);
        let (again, did) = ledger
            .refund(RefundTarget::Payment(paid.id.clone()), None)
            .expect("known payment");
        assert!(!did);
        assert_eq!(again, refunded);
        // A retried charge returns the refunded payment: no second charge.
        assert_eq!(
            ledger
                .charge(charge("k1", 500))
                .map(|(p, made)| (p.refunded, made)),
            Ok((true, false))
        );
        assert_eq!(
            ledger.refund(RefundTarget::Payment("pay-nope".into()), None),
            Err(LedgerError::UnknownPayment("pay-nope".into()))
        );
    }

    #[test]
    fn refund_by_charge_key_finds_the_payment() {
        let ledger = Ledger::default();
        let (paid, _) = ledger.charge(charge("k1", 500)).expect("new key");
        let (refunded, _) = ledger
            .refund(RefundTarget::ChargeKey("k1".into()), None)
            .expect("charged");
        assert_eq!(refunded.id, paid.id);
        assert_eq!(ledger.get(&paid.id).map(|p| p.refunded), Some(true));
    }

    #[test]
    fn refund_of_a_missing_charge_voids_its_key() {
        let ledger = Ledger::default();
        assert_eq!(
            ledger.refund(RefundTarget::ChargeKey("k1".into()), None),
            Err(LedgerError::NoCharge("k1".into()))
        );
        // The charge whose answer was "lost" arrives late: it must not take money.
        assert_eq!(
            ledger.charge(charge("k1", 500)),
            Err(LedgerError::ChargeKeyVoided("k1".into()))
        );
        assert_eq!(
            ledger.refund(RefundTarget::ChargeKey("k1".into()), None),
            Err(LedgerError::NoCharge("k1".into()))
        );
    }

    #[test]
    fn refund_key_is_bound_to_one_payment() {
        let ledger = Ledger::default();
        let (a, _) = ledger.charge(charge("k1", 500)).expect("new key");
        let (b, _) = ledger.charge(charge("k2", 500)).expect("new key");
        ledger
            .refund(RefundTarget::Payment(a.id.clone()), Some("r1"))
            .expect("known payment");
        assert!(ledger
            .refund(RefundTarget::Payment(a.id), Some("r1"))
            .is_ok());
        assert_eq!(
            ledger.refund(RefundTarget::Payment(b.id), Some("r1")),
            Err(LedgerError::RefundKeyReused("r1".into()))
        );
    }
}
