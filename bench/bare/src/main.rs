//! The HTTP ceiling for `bench/load.sh`: a bare actix-web server with one
//! route, `POST /v1/decide`, that parses the same JSON body as the real
//! decide handler (same field set, same `Features` deserializer, so the
//! parse cost is identical) and answers a small constant-shaped JSON. No
//! model, no store, no log: whatever Nudge's decide costs beyond this is
//! the service's own work.
//!
//! Settings (environment): `BARE_BIND` (default `127.0.0.1:8081`),
//! `NUDGE_WORKERS` (0 or unset = actix default, one per core), read the same
//! way the service reads its worker count.
//!
//! ```sh
//! cargo run --release --bin bare
//! ```
//!
//! A crate of its own (`bench/bare`, a workspace member) rather than an
//! example: building an example compiles every dev-dependency of `nudge`.

use actix_web::{App, HttpResponse, HttpServer, web};
use nudge::features::Features;
use nudge::policy::Candidate;
use serde::{Deserialize, Serialize};

/// Mirrors `nudge::http::decide::DecideBody` field for field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct DecideBody {
    policy: String,
    event_id: Option<String>,
    #[serde(default)]
    context: Features,
    #[serde(default)]
    actions: Vec<Candidate<Features>>,
    #[serde(default)]
    excluded: Vec<String>,
    k: Option<usize>,
    #[serde(default)]
    defer: bool,
}

#[derive(Serialize)]
struct Answer<'a> {
    action: &'a str,
    probability: f64,
}

async fn decide(body: web::Bytes) -> HttpResponse {
    match serde_json::from_slice::<DecideBody>(&body) {
        Ok(b) => {
            // Touch the parsed body so nothing is optimised away.
            let probability = 1.0 / (b.context.0.len().max(1) as f64);
            HttpResponse::Ok().json(Answer {
                action: "a0",
                probability,
            })
        }
        Err(e) => HttpResponse::BadRequest().json(serde_json::json!({
            "error": "invalid_json",
            "message": e.to_string(),
        })),
    }
}

async fn readyz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
}

fn main() -> std::io::Result<()> {
    let bind = std::env::var("BARE_BIND").unwrap_or_else(|_| "127.0.0.1:8081".into());
    let workers: usize = std::env::var("NUDGE_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut server = HttpServer::new(|| {
            App::new()
                // Same 1 MiB limit as the service's NUDGE_MAX_BODY_BYTES default.
                .app_data(web::PayloadConfig::new(1 << 20))
                .route("/v1/decide", web::post().to(decide))
                .route("/readyz", web::get().to(readyz))
        })
        .bind(&bind)?
        .shutdown_timeout(5);
        if workers > 0 {
            server = server.workers(workers);
        }
        eprintln!("bare listening on {bind} (workers = {workers}, 0 = one per core)");
        server.run().await
    })
}
