//! Long jobs one request starts and later requests collect: an audit of
//! years of journal, or a backup of tens of gigabytes, outlasts the
//! server's time limit on one request (`server::REQUEST_TIMEOUT`) and any
//! proxy's. The starter gets a number at once and asks for the outcome
//! until it is there. One job of a kind runs at a time; the last
//! [`KEPT`] finished are kept (a node restarted has none).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::caisse::CaisseError;

/// Finished jobs of a kind kept for their starters to collect.
pub const KEPT: usize = 8;

/// A job started by a request, with what it was asked (`A`) and, once
/// finished, its outcome (`T`, or why it stopped).
#[derive(Clone, Debug)]
pub struct Run<A, T> {
    /// Its number, since the node started.
    pub id: u64,
    /// What it was asked to do.
    pub ask: A,
    /// When it started.
    pub started: Instant,
    /// How long it took, once finished.
    pub took: Option<Duration>,
    /// Its outcome, once finished.
    pub outcome: Option<Result<T, String>>,
}

impl<A, T> Run<A, T> {
    /// Seconds it has run, or took.
    pub fn seconds(&self) -> u64 {
        self.took
            .unwrap_or_else(|| self.started.elapsed())
            .as_secs()
    }
}

/// The jobs of one kind: the running one (at most one) and the last
/// [`KEPT`] finished.
pub struct Runs<A, T> {
    next: u64,
    runs: VecDeque<Run<A, T>>,
}

impl<A, T> Default for Runs<A, T> {
    fn default() -> Self {
        Runs {
            next: 0,
            runs: VecDeque::new(),
        }
    }
}

impl<A: Clone, T: Clone> Runs<A, T> {
    /// The job a request asking `ask` gets, and whether it is new (to be
    /// started): while one runs, that one if `joins` accepts it (it does
    /// what is asked as well), or `joins`'s refusal.
    pub fn begin(
        &mut self,
        ask: A,
        joins: impl FnOnce(&Run<A, T>) -> Result<(), CaisseError>,
    ) -> Result<(Run<A, T>, bool), CaisseError> {
        if let Some(r) = self.runs.iter().find(|r| r.outcome.is_none()) {
            joins(r)?;
            return Ok((r.clone(), false));
        }
        while self.runs.len() >= KEPT {
            self.runs.pop_front();
        }
        self.next = self.next.saturating_add(1);
        let run = Run {
            id: self.next,
            ask,
            started: Instant::now(),
            took: None,
            outcome: None,
        };
        self.runs.push_back(run.clone());
        Ok((run, true))
    }

    /// Job `id` ended with `outcome`.
    pub fn finish(&mut self, id: u64, outcome: Result<T, String>) {
        if let Some(r) = self.runs.iter_mut().find(|r| r.id == id) {
            r.took = Some(r.started.elapsed());
            r.outcome = Some(outcome);
        }
    }

    /// Job `id`, running or among the last finished.
    pub fn get(&self, id: u64) -> Option<Run<A, T>> {
        self.runs.iter().find(|r| r.id == id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asking again while a job runs gets it when `joins` accepts, its
    /// refusal otherwise; finished jobs are kept up to the bound.
    #[test]
    fn one_job_at_a_time_and_asking_again_gets_it() {
        let mut runs: Runs<bool, u32> = Runs::default();
        let full_answers = |full: bool| {
            move |r: &Run<bool, u32>| {
                if r.ask || !full {
                    Ok(())
                } else {
                    Err(CaisseError::Conflict("not full".into()))
                }
            }
        };
        let (first, new) = runs.begin(false, full_answers(false)).unwrap();
        assert!(new);
        let (again, new) = runs.begin(false, full_answers(false)).unwrap();
        assert!(!new && again.id == first.id);
        assert!(matches!(
            runs.begin(true, full_answers(true)),
            Err(CaisseError::Conflict(_))
        ));
        runs.finish(first.id, Ok(1));
        assert_eq!(runs.get(first.id).unwrap().outcome, Some(Ok(1)));
        let (full, new) = runs.begin(true, full_answers(true)).unwrap();
        assert!(new && full.id != first.id && full.ask);
        let (answered, new) = runs.begin(false, full_answers(false)).unwrap();
        assert!(!new && answered.id == full.id);
        runs.finish(full.id, Err("stopped".into()));
        for _ in 0..3 * KEPT {
            let (r, new) = runs.begin(false, full_answers(false)).unwrap();
            assert!(new);
            runs.finish(r.id, Ok(2));
        }
        assert_eq!(runs.runs.len(), KEPT);
        assert!(runs.get(first.id).is_none());
        assert!(runs.runs.iter().all(|r| r.outcome.is_some()));
    }
}
