//! The one error body of the API: `{"error": {"code", "message", "field"?}}`.
//! Codes are stable and machine-readable; messages are for people.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use std::fmt;

/// An error answered to the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status (4xx: the caller's fault; 503: a store is down).
    pub status: StatusCode,
    /// Stable code, e.g. `invalid_field`, `unknown_policy`.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, as a path (`context.age`).
    pub field: Option<String>,
    /// Several problems at once (a refused policy reload lists every
    /// `{file, key, message}`).
    pub errors: Option<Vec<serde_json::Value>>,
}

/// The JSON shape of an error.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Inside [`ErrorBody`].
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Path of the offending request field, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every problem, when there are several (`invalid_policy_files`:
    /// `{file, key, message}` each).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub errors: Option<Vec<serde_json::Value>>,
}

impl ApiError {
    /// A 400 naming a field.
    pub fn field(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            field: Some(field.into()),
            errors: None,
        }
    }

    /// An error with any status and no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            errors: None,
        }
    }

    /// Lists several problems.
    pub fn with_errors(mut self, errors: Vec<serde_json::Value>) -> Self {
        self.errors = Some(errors);
        self
    }

    /// Sets the field.
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                field: self.field.clone(),
                errors: self.errors.clone(),
            },
        })
    }
}
