//! The reply envelope of every request (PROTOCOL.md, "Requests and replies"):
//! `{"corr":..,"ok":true,"result":..}` or
//! `{"corr":..,"ok":false,"error":{"code":..,"message":..}}`.

use crate::code::ErrorBody;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A reply. `corr` is the request's `corr` field exactly as the client wrote
/// it (any JSON value, a float's digits included), absent when the request
/// had none; `result` is present when `ok`, `error` when not.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply<'a, R> {
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub corr: Option<&'a RawValue>,
    pub ok: bool,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub result: Option<R>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

fn none<R>() -> Option<R> {
    None
}

impl<'a, R> Reply<'a, R> {
    /// `{"corr":..,"ok":true,"result":..}`
    pub fn ok(corr: Option<&'a RawValue>, result: R) -> Self {
        Reply {
            corr,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// `{"corr":..,"ok":false,"error":{"code":..,"message":..}}`
    pub fn err(corr: Option<&'a RawValue>, error: ErrorBody) -> Self {
        Reply {
            corr,
            ok: false,
            result: None,
            error: Some(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::Code;
    use crate::result::SeqResult;

    #[test]
    fn ok_and_err_round_trip_with_the_corr_as_written() -> Result<(), serde_json::Error> {
        // 17 significant digits: a parsed f64 would print 1 ulp off
        let corr: &RawValue = serde_json::from_str("5.7460254689548115e+169")?;
        let ok = serde_json::to_string(&Reply::ok(Some(corr), SeqResult::new(7)))?;
        assert_eq!(
            ok,
            r#"{"corr":5.7460254689548115e+169,"ok":true,"result":{"seq":7}}"#
        );
        let back: Reply<SeqResult> = serde_json::from_str(&ok)?;
        assert_eq!(
            back.corr.map(RawValue::get),
            Some("5.7460254689548115e+169")
        );
        assert_eq!(back.result, Some(SeqResult::new(7)));

        let error = ErrorBody {
            code: Code::BadRequest,
            message: "limit must be 1..1000".into(),
        };
        let err = serde_json::to_string(&Reply::<()>::err(None, error.clone()))?;
        assert_eq!(
            err,
            r#"{"ok":false,"error":{"code":"bad_request","message":"limit must be 1..1000"}}"#
        );
        let back: Reply<()> = serde_json::from_str(&err)?;
        assert!(!back.ok && back.corr.is_none() && back.result.is_none());
        assert_eq!(back.error, Some(error));
        Ok(())
    }
}
