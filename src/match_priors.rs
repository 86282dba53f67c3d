//! `--match-priors[=PRIORS]`, the flag `evaluate` and `predict` share (each includes this file
//! as a module).

use wick_data::Targets;
use wick_trainer::eval::Predictions;
use wick_trainer::infer::Ensemble;
use wick_trainer::priors::{self, Matched, Priors};

#[derive(Debug, clap::Args)]
pub struct MatchPriors {
    /// Single-label: move the predictions of all the rows of this call together so that their
    /// mean equals label priors (one factor per label; what it did is printed). `train` (the
    /// default value) takes the label frequencies of the rows the (first) checkpoint trained on;
    /// `uniform` or `label=weight,...` gives them. Only for rows known to have those label
    /// proportions, such as a test split drawn like the training rows. A value goes after `=`
    /// (`--match-priors=uniform`), so that a text may follow the flag.
    #[arg(
        long,
        value_name = "PRIORS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "train"
    )]
    pub match_priors: Option<String>,
}

impl MatchPriors {
    /// `None` without the flag; with it, the priors it names, `predictions` matched to them, and
    /// the line saying what matching did.
    pub fn apply(
        &self,
        ensemble: &Ensemble,
        predictions: &Predictions,
        targets: &Targets,
    ) -> wick_trainer::Result<Option<(Priors, Matched, String)>> {
        let Some(spec) = &self.match_priors else {
            return Ok(None);
        };
        let priors = ensemble.priors(spec)?;
        let matched = priors::match_priors(predictions, &priors, targets)?;
        let rows = predictions.probs.len();
        let line = priors::describe(ensemble.labels(), &priors, &matched, rows);
        Ok(Some((priors, matched, line)))
    }
}
