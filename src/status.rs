//! The combinable status word.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// The status word of a request's connection, PHP's `connection_status()`.
///
/// A bit field: [`NORMAL`](Self::NORMAL) is no bit,
/// [`ABORTED`](Self::ABORTED) is bit 0 and [`TIMEOUT`](Self::TIMEOUT) is
/// bit 1, so a request whose client left *and* whose time limit expired has
/// status `ABORTED | TIMEOUT` (3), exactly like PHP's `CONNECTION_ABORTED |
/// CONNECTION_TIMEOUT`. Bits are only ever added during a request, never
/// cleared.
///
/// # Example
///
/// ```
/// use tower_lifecycle::ConnectionStatus;
///
/// let both = ConnectionStatus::ABORTED | ConnectionStatus::TIMEOUT;
/// assert_eq!(both.bits(), 3);
/// assert!(both.is_aborted() && both.is_timeout());
/// assert!(both.contains(ConnectionStatus::ABORTED));
/// assert_eq!(both.to_string(), "aborted|timeout");
/// assert_eq!(ConnectionStatus::from_bits(3), Some(both));
/// assert_eq!(ConnectionStatus::from_bits(4), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ConnectionStatus(u8);

impl ConnectionStatus {
    /// The request ended normally: the client did not leave and no time
    /// limit expired. PHP's `CONNECTION_NORMAL` (0).
    pub const NORMAL: Self = Self(0);
    /// The client left before the response was handed over completely.
    /// PHP's `CONNECTION_ABORTED` (1).
    ///
    /// What the layer sees is the server dropping the response future
    /// before the head, or the body before it was complete; hyper does that
    /// when the client left. A layer *outside* this one that drops them on
    /// its own, such as tower-http's `TimeoutLayer`, looks exactly the same,
    /// so put [`LifecycleLayer`](crate::LifecycleLayer) outside every layer
    /// that can end a request by itself, and use its
    /// [`time_limit`](crate::LifecycleLayer::time_limit) instead of
    /// `TimeoutLayer`.
    pub const ABORTED: Self = Self(1);
    /// The request's time limit expired. PHP's `CONNECTION_TIMEOUT` (2).
    pub const TIMEOUT: Self = Self(2);

    const ALL: u8 = Self::ABORTED.0 | Self::TIMEOUT.0;

    /// The raw bits: 0, 1, 2 or 3.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// The status with these bits, or `None` when `bits` has a bit that is
    /// not a status (anything above 3).
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits & !Self::ALL == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }

    /// Whether no bit is set.
    pub const fn is_normal(self) -> bool {
        self.0 == 0
    }

    /// Whether the [`ABORTED`](Self::ABORTED) bit is set.
    pub const fn is_aborted(self) -> bool {
        self.0 & Self::ABORTED.0 != 0
    }

    /// Whether the [`TIMEOUT`](Self::TIMEOUT) bit is set.
    pub const fn is_timeout(self) -> bool {
        self.0 & Self::TIMEOUT.0 != 0
    }

    /// Whether every bit of `other` is set in `self`.
    ///
    /// Every status contains [`NORMAL`](Self::NORMAL), which has no bit.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for ConnectionStatus {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for ConnectionStatus {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

/// Prints `normal`, `aborted`, `timeout` or `aborted|timeout`.
impl fmt::Display for ConnectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.is_aborted(), self.is_timeout()) {
            (false, false) => "normal",
            (true, false) => "aborted",
            (false, true) => "timeout",
            (true, true) => "aborted|timeout",
        })
    }
}

impl fmt::Debug for ConnectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionStatus({self} = {})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionStatus as S;

    #[test]
    fn bits_match_php() {
        assert_eq!(S::NORMAL.bits(), 0);
        assert_eq!(S::ABORTED.bits(), 1);
        assert_eq!(S::TIMEOUT.bits(), 2);
        assert_eq!((S::ABORTED | S::TIMEOUT).bits(), 3);
    }

    #[test]
    fn from_bits_round_trips_and_rejects_unknown_bits() {
        for bits in 0..=u8::MAX {
            match S::from_bits(bits) {
                Some(s) => {
                    assert!(bits <= 3);
                    assert_eq!(s.bits(), bits);
                }
                None => assert!(bits > 3),
            }
        }
    }

    #[test]
    fn bits_only_add() {
        let mut s = S::NORMAL;
        assert!(s.is_normal());
        s |= S::TIMEOUT;
        assert!(s.is_timeout() && !s.is_aborted() && !s.is_normal());
        s |= S::ABORTED;
        s |= S::NORMAL;
        assert_eq!(s, S::ABORTED | S::TIMEOUT);
        assert!(s.contains(S::TIMEOUT) && s.contains(S::ABORTED) && s.contains(S::NORMAL));
        assert!(!S::ABORTED.contains(S::TIMEOUT));
    }

    #[test]
    fn display() {
        assert_eq!(S::NORMAL.to_string(), "normal");
        assert_eq!(S::ABORTED.to_string(), "aborted");
        assert_eq!(S::TIMEOUT.to_string(), "timeout");
        assert_eq!((S::TIMEOUT | S::ABORTED).to_string(), "aborted|timeout");
        assert_eq!(format!("{:?}", S::ABORTED), "ConnectionStatus(aborted = 1)");
    }
}
