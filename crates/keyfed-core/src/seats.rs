//! Seat rules (r13, e06): a key's grants never exceed the seats this node
//! holds of it. The store calls these inside its transaction.
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SeatError {
    #[error("key {key_id} has {free} free seat(s) of {total}; {object} asked for {requested}")]
    NotEnough {
        key_id: String,
        object: String,
        requested: u32,
        free: u32,
        total: u32,
    },
    #[error("a grant must be at least one seat; to take seats back, unassign {object}")]
    Zero { object: String },
}

/// Checks that setting `object`'s grant to `requested` keeps the key within
/// `total`, given what every other object holds.
pub fn check_assign(
    key_id: &str,
    object: &str,
    total: u32,
    held_by_others: u32,
    requested: u32,
) -> Result<(), SeatError> {
    if requested == 0 {
        return Err(SeatError::Zero {
            object: object.to_owned(),
        });
    }
    let free = total.saturating_sub(held_by_others);
    if requested > free {
        return Err(SeatError::NotEnough {
            key_id: key_id.to_owned(),
            object: object.to_owned(),
            requested,
            free,
            total,
        });
    }
    Ok(())
}

/// How many of `wanted` seats fit in what is left of `total` (r11: a renewal
/// with too few seats leaves the rest unlicensed).
#[must_use]
pub fn fit(total: u32, held: u32, wanted: u32) -> u32 {
    wanted.min(total.saturating_sub(held))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r13_a_grant_never_exceeds_the_free_seats() {
        assert!(check_assign("k", "a", 10, 6, 4).is_ok());
        let err = check_assign("k", "a", 10, 6, 5).unwrap_err();
        assert_eq!(
            err.to_string(),
            "key k has 4 free seat(s) of 10; a asked for 5"
        );
        assert!(check_assign("k", "a", 10, 0, 0).is_err());
        assert_eq!(fit(10, 8, 5), 2);
        assert_eq!(fit(10, 12, 5), 0);
    }
}
