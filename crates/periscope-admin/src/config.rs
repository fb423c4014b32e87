//! `/debug/config`: the service's configuration with its secrets masked
//! ([`Redactor::mask_value`]), once, when the admin service is built (the unmasked value is not
//! kept).

use periscope_log::Redactor;
use serde_json::Value;

/// The masked configuration, encoded.
pub(crate) fn masked(mut config: Value, redactor: &Redactor) -> Result<Vec<u8>, serde_json::Error> {
    redactor.mask_value(&mut config);
    serde_json::to_vec(&config)
}
