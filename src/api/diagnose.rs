//! `GET /api/diagnose?start=&end=[&baseline_start=&baseline_end=][&service=]`: which
//! services and operations are the likely cause of what went wrong in a window, ranked
//! (see [`crate::diagnose`]). Times are unix seconds (fractions allowed), milliseconds or
//! nanoseconds (told apart by magnitude) or RFC 3339; the window defaults to the last 15
//! minutes and the baseline to the same length just before it.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;

use super::{ApiError, AppState};
use crate::diagnose::{self, Diagnosis, Request};

/// The window when none is given.
const DEFAULT_WINDOW_NANOS: u64 = 15 * 60 * 1_000_000_000;

fn time(params: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ApiError> {
    match params.get(key).map(|text| text.trim()).filter(|text| !text.is_empty()) {
        None => Ok(None),
        Some(text) => crate::ingest::logline::parse_time_text(text)
            .map(Some)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{key}={text:?} is not a time (unix seconds, milliseconds, nanoseconds or RFC 3339)"
                ))
            }),
    }
}

/// The request a query string asks for, `now` filling what it leaves out.
pub fn request(params: &HashMap<String, String>, now: u64) -> Result<Request, ApiError> {
    let end = time(params, "end")?.unwrap_or(now);
    let start = time(params, "start")?.unwrap_or(end.saturating_sub(DEFAULT_WINDOW_NANOS));
    if start >= end {
        return Err(ApiError::BadRequest("start must be before end".into()));
    }
    let baseline_end = time(params, "baseline_end")?.unwrap_or(start);
    let baseline_start =
        time(params, "baseline_start")?.unwrap_or(baseline_end.saturating_sub(end - start));
    if baseline_start >= baseline_end {
        return Err(ApiError::BadRequest(
            "baseline_start must be before baseline_end".into(),
        ));
    }
    Ok(Request {
        start_unix_nano: start,
        end_unix_nano: end,
        baseline_start_unix_nano: baseline_start,
        baseline_end_unix_nano: baseline_end,
        service: params
            .get("service")
            .filter(|service| !service.is_empty())
            .cloned(),
    })
}

pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

/// Diagnose on a blocking thread.
pub async fn run(state: &AppState, request: Request) -> Result<Diagnosis, ApiError> {
    let storage = state.storage.clone();
    let pipeline = state.pipeline.clone();
    super::blocking(move || {
        let inputs = diagnose::gather(&storage, &pipeline.metrics, &request)?;
        Ok(diagnose::diagnose(&inputs))
    })
    .await
    .map_err(ApiError::Internal)
}

pub async fn get_diagnose(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Diagnosis>, ApiError> {
    let request = request(&params, now_nanos())?;
    Ok(Json(run(&state, request).await?))
}
