//! Stage 9, schema: the API's field table (`enforce`: 400 naming the fields; `warn`:
//! forward and log). Never rewrites the payload. Every violation is counted by field.

use crate::error::Reject;
use crate::guard::schema::{self, Mode};

use super::Ctx;

/// Checks the opened payload against the route's API table, when it names one.
pub(super) fn check(cx: &Ctx<'_>, plain: &[u8]) -> Result<(), Reject> {
    let cfg = &cx.route.cfg;
    let Some((api, mode)) = cfg.schema else {
        return Ok(());
    };
    let Err(problems) = schema::check(api, plain) else {
        return Ok(());
    };
    for p in &problems {
        cx.rt
            .metrics
            .schema_violations
            .with_label_values(&[&cx.lst.name, &cfg.path, p.field, mode_name(mode)])
            .inc();
    }
    match mode {
        Mode::Enforce => Err(Reject::Schema {
            api: api.name(),
            problems,
        }),
        Mode::Warn => {
            let fields: Vec<&str> = problems.iter().map(|p| p.field).collect();
            tracing::warn!(
                request_id = %cx.request_id,
                route = %cfg.path,
                api = api.name(),
                fields = ?fields,
                "payload does not match the schema; forwarded (warn mode)"
            );
            Ok(())
        }
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Warn => "warn",
    }
}
