//! Time for the cluster state's own deadlines (keep-alives, rounds, back-offs):
//! the wall clock's time, except that a step back is not followed. A clock
//! set back by NTP, or by hand, must not postpone a keep-alive past the
//! lease's TTL and make a live owner look dead to every other Envoy.
//! Record times (first failure, last sync) stay the wall clock's.

/// Milliseconds that never go back.
#[derive(Debug, Default)]
pub struct SteadyClock {
    last_wall_ms: Option<u64>,
    now_ms: u64,
}

impl SteadyClock {
    /// The steady time, given the wall clock's: moves by as much as the
    /// wall clock moved forward since the last reading; a step back counts
    /// as no time at all.
    pub fn read(&mut self, wall_ms: u64) -> u64 {
        self.now_ms = match self.last_wall_ms {
            None => wall_ms,
            Some(last) => self.now_ms.saturating_add(wall_ms.saturating_sub(last)),
        };
        self.last_wall_ms = Some(wall_ms);
        self.now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_back_is_not_followed_and_time_goes_on_after_it() {
        let mut clock = SteadyClock::default();
        assert_eq!(clock.read(10_000), 10_000);
        assert_eq!(clock.read(10_100), 10_100);
        // Set back five seconds: time stands still for the step...
        assert_eq!(clock.read(5_100), 10_100);
        // ...and goes on from there at the wall clock's pace.
        assert_eq!(clock.read(5_200), 10_200);
        // A step forward is followed.
        assert_eq!(clock.read(65_200), 70_200);
    }
}
