//! Conversions between the protobuf messages and the library's types, shared by
//! the server and the client, plus the mapping of engine errors to gRPC statuses.

use tonic::{Code, Status};

use super::pb;
use crate::decision::{Calibration, Decision};
use crate::engine::{
    EngineError, EnrollOutcome, Match, Region, SearchFilter, SearchOptions, SearchResult,
    StageTimings,
};
use crate::store::{MarkFields, MarkRecord, MarkStatus};

/// The gRPC status for an engine error: the client's fault or ours, precisely.
pub fn status(error: EngineError) -> Status {
    let code = match &error {
        EngineError::Image(_) | EngineError::InvalidArgument(_) => Code::InvalidArgument,
        EngineError::NotFound(_) => Code::NotFound,
        EngineError::AlreadyExists(_) => Code::AlreadyExists,
        EngineError::ModelMismatch { .. } | EngineError::Locked { .. } => Code::FailedPrecondition,
        EngineError::Io { .. }
        | EngineError::Store(_)
        | EngineError::Embed(_)
        | EngineError::BatchAborted(_) => Code::Internal,
    };
    if code == Code::Internal {
        tracing::error!(%error, "internal error");
    }
    Status::new(code, error.to_string())
}

pub fn status_to_proto(status: MarkStatus) -> pb::MarkStatus {
    match status {
        MarkStatus::Active => pb::MarkStatus::Active,
        MarkStatus::Pending => pb::MarkStatus::Pending,
        MarkStatus::Suspended => pb::MarkStatus::Suspended,
        MarkStatus::Expired => pb::MarkStatus::Expired,
        MarkStatus::Withdrawn => pb::MarkStatus::Withdrawn,
    }
}

/// `None` for UNSPECIFIED (and unknown values from newer clients).
pub fn status_from_proto(value: i32) -> Option<MarkStatus> {
    match pb::MarkStatus::try_from(value).ok()? {
        pb::MarkStatus::Unspecified => None,
        pb::MarkStatus::Active => Some(MarkStatus::Active),
        pb::MarkStatus::Pending => Some(MarkStatus::Pending),
        pb::MarkStatus::Suspended => Some(MarkStatus::Suspended),
        pb::MarkStatus::Expired => Some(MarkStatus::Expired),
        pb::MarkStatus::Withdrawn => Some(MarkStatus::Withdrawn),
    }
}

/// Nice classes from the wire; a value over 255 is reported, not truncated.
pub fn classes_from_proto(classes: &[u32]) -> Result<Vec<u8>, Status> {
    classes
        .iter()
        .map(|&c| {
            u8::try_from(c)
                .map_err(|_| Status::invalid_argument(format!("nice class {c} is outside 1..=45")))
        })
        .collect()
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

pub fn fields_from_proto(fields: Option<pb::MarkFields>) -> Result<MarkFields, Status> {
    let f = fields.unwrap_or_default();
    Ok(MarkFields {
        recordation_number: non_empty(&f.recordation_number),
        registration_number: non_empty(&f.registration_number),
        name: non_empty(&f.name),
        holder: non_empty(&f.holder),
        nice_classes: classes_from_proto(&f.nice_classes)?,
        status: status_from_proto(f.status).unwrap_or_default(),
        valid_until: non_empty(&f.valid_until),
    })
}

pub fn fields_to_proto(f: &MarkFields) -> pb::MarkFields {
    pb::MarkFields {
        recordation_number: f.recordation_number.clone().unwrap_or_default(),
        registration_number: f.registration_number.clone().unwrap_or_default(),
        name: f.name.clone().unwrap_or_default(),
        holder: f.holder.clone().unwrap_or_default(),
        nice_classes: f.nice_classes.iter().map(|&c| u32::from(c)).collect(),
        status: status_to_proto(f.status) as i32,
        valid_until: f.valid_until.clone().unwrap_or_default(),
    }
}

pub fn mark_to_proto(record: &MarkRecord) -> pb::Mark {
    pb::Mark {
        id: record.id.clone(),
        fields: Some(fields_to_proto(&record.fields)),
        image_sha256: record.image_sha256.clone(),
        image_format: record.image_format.clone(),
        views: record.views as u32,
        created_at: record.created_at.clone(),
        updated_at: record.updated_at.clone(),
        image: Vec::new(),
    }
}

pub fn mark_from_proto(mark: pb::Mark) -> Result<MarkRecord, Status> {
    Ok(MarkRecord {
        fields: fields_from_proto(mark.fields)?,
        id: mark.id,
        image_sha256: mark.image_sha256,
        image_format: mark.image_format,
        views: mark.views as usize,
        created_at: mark.created_at,
        updated_at: mark.updated_at,
    })
}

pub fn outcome_to_proto(outcome: EnrollOutcome) -> pb::EnrollOutcome {
    match outcome {
        EnrollOutcome::Created => pb::EnrollOutcome::Created,
        EnrollOutcome::Replaced => pb::EnrollOutcome::Replaced,
        EnrollOutcome::Updated => pb::EnrollOutcome::Updated,
        EnrollOutcome::Unchanged => pb::EnrollOutcome::Unchanged,
    }
}

/// Search options from a request, with the documented defaults.
pub fn options_from_proto(request: &pb::SearchRequest) -> Result<SearchOptions, Status> {
    let filter = request.filter.clone().unwrap_or_default();
    Ok(SearchOptions {
        top_k: if request.top_k == 0 {
            10
        } else {
            request.top_k as usize
        },
        // Unset (0) keeps every match, as the library's default does.
        min_score: if request.min_score == 0.0 {
            -1.0
        } else {
            request.min_score
        },
        filter: SearchFilter {
            nice_classes: classes_from_proto(&filter.nice_classes)?,
            statuses: filter
                .statuses
                .iter()
                .filter_map(|&s| status_from_proto(s))
                .collect(),
            holder: non_empty(&filter.holder),
        },
        knockouts: request
            .knockouts
            .unwrap_or(SearchOptions::default().knockouts),
    })
}

/// The request for `options`, the inverse of [`options_from_proto`].
pub fn options_to_proto(options: &SearchOptions) -> pb::SearchRequest {
    pb::SearchRequest {
        request_id: String::new(),
        image: Vec::new(),
        top_k: options.top_k as u32,
        min_score: options.min_score,
        filter: Some(pb::SearchFilter {
            nice_classes: options
                .filter
                .nice_classes
                .iter()
                .map(|&c| u32::from(c))
                .collect(),
            statuses: options
                .filter
                .statuses
                .iter()
                .map(|&s| status_to_proto(s) as i32)
                .collect(),
            holder: options.filter.holder.clone().unwrap_or_default(),
        }),
        knockouts: Some(options.knockouts),
    }
}

pub fn timings_to_proto(t: &StageTimings) -> pb::StageTimings {
    pb::StageTimings {
        decode_ms: t.decode_ms,
        preprocess_ms: t.preprocess_ms,
        embed_ms: t.embed_ms,
        search_ms: t.search_ms,
        total_ms: t.total_ms,
        verify_ms: t.verify_ms,
    }
}

pub fn result_to_proto(request_id: String, result: &SearchResult) -> pb::SearchResponse {
    pb::SearchResponse {
        request_id,
        matches: result
            .matches
            .iter()
            .map(|m| pb::Match {
                rank: m.rank as u32,
                score: m.score,
                mark: Some(mark_to_proto(&m.record)),
                similarity: m.similarity,
                inliers: m.inliers,
                support: m.support,
                region: m.region.as_ref().map(region_to_proto),
                mark_region: m.mark_region.as_ref().map(region_to_proto),
            })
            .collect(),
        timings: Some(timings_to_proto(&result.timings)),
        error: None,
        decision: decision_to_proto(result.decision) as i32,
    }
}

fn region_to_proto(r: &Region) -> pb::Region {
    let [left, top, right, bottom] = r.bounds;
    pb::Region {
        left,
        top,
        right,
        bottom,
        points: r.points.iter().map(|&[x, y]| pb::Point { x, y }).collect(),
    }
}

fn region_from_proto(r: pb::Region) -> Region {
    Region {
        bounds: [r.left, r.top, r.right, r.bottom],
        points: r.points.into_iter().map(|p| [p.x, p.y]).collect(),
    }
}

pub fn thresholds_to_proto(c: &Calibration) -> pb::DecisionThresholds {
    pb::DecisionThresholds {
        no_match_below: c.no_match_below,
        match_from: c.match_from.is_finite().then_some(c.match_from),
        match_inlier_margin: c.match_inlier_margin,
        max_miss: c.max_miss,
        min_precision: c.min_precision,
        recorded: c.recorded as u64,
        unrecorded: c.unrecorded as u64,
        gallery: c.gallery as u64,
        scoring: c.scoring.clone(),
    }
}

fn decision_to_proto(d: Decision) -> pb::Decision {
    match d {
        Decision::Match => pb::Decision::Match,
        Decision::Possible => pb::Decision::Possible,
        Decision::NoMatch => pb::Decision::NoMatch,
        Decision::Uncalibrated => pb::Decision::Uncalibrated,
    }
}

fn decision_from_proto(d: i32) -> Result<Decision, Status> {
    match pb::Decision::try_from(d) {
        Ok(pb::Decision::Match) => Ok(Decision::Match),
        Ok(pb::Decision::Possible) => Ok(Decision::Possible),
        Ok(pb::Decision::NoMatch) => Ok(Decision::NoMatch),
        Ok(pb::Decision::Uncalibrated) => Ok(Decision::Uncalibrated),
        Ok(pb::Decision::Unspecified) | Err(_) => Err(Status::internal(format!(
            "server replied with no valid decision ({d})"
        ))),
    }
}

/// A reply back into the library's result type (what the CLI prints in both modes).
pub fn result_from_proto(reply: pb::SearchResponse) -> Result<SearchResult, Status> {
    if let Some(error) = reply.error {
        let code = Code::from_i32(code_from_name(&error.code));
        return Err(Status::new(code, error.message));
    }
    let matches = reply
        .matches
        .into_iter()
        .map(|m| {
            Ok(Match {
                rank: m.rank as usize,
                score: m.score,
                similarity: m.similarity,
                inliers: m.inliers,
                support: m.support,
                region: m.region.map(region_from_proto),
                mark_region: m.mark_region.map(region_from_proto),
                record: mark_from_proto(m.mark.unwrap_or_default())?,
            })
        })
        .collect::<Result<_, Status>>()?;
    let t = reply.timings.unwrap_or_default();
    Ok(SearchResult {
        matches,
        decision: decision_from_proto(reply.decision)?,
        timings: StageTimings {
            decode_ms: t.decode_ms,
            preprocess_ms: t.preprocess_ms,
            embed_ms: t.embed_ms,
            search_ms: t.search_ms,
            verify_ms: t.verify_ms,
            total_ms: t.total_ms,
        },
        query_views: Vec::new(),
        query_keypoints: Vec::new(),
    })
}

/// The canonical name of a status code, as used in stream error fields.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn code_from_name(name: &str) -> i32 {
    (0..=16)
        .find(|&c| code_name(Code::from_i32(c)) == name)
        .unwrap_or(Code::Unknown as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_options_survive_the_trip_through_a_request() {
        let options = SearchOptions {
            top_k: 7,
            min_score: 0.25,
            filter: SearchFilter {
                nice_classes: vec![9, 25],
                statuses: vec![],
                holder: Some("acme".into()),
            },
            knockouts: false,
        };
        let back = options_from_proto(&options_to_proto(&options)).unwrap();
        assert_eq!(back, options);
        let default = options_from_proto(&pb::SearchRequest::default()).unwrap();
        assert_eq!(default, SearchOptions::default());
    }
}
