//! The gateway's metric families and their HELP text, described once. Labels are bounded
//! (reason, transport); never an id. [`describe`] runs once per process, before the first
//! scrape; a family recorded here but not described is caught by the binary's `/metrics`
//! test.

use metrics::{Unit, describe_counter, describe_gauge};

/// Gives every gateway metric family its HELP text (and unit).
pub fn describe() {
    describe_gauge!(
        "larachat_gateway_ws_connections",
        Unit::Count,
        "Realtime (WebSocket) connections open on this gateway, authenticated or not."
    );
    describe_counter!(
        "larachat_gateway_ws_closed_total",
        Unit::Count,
        "Realtime connections closed, by reason (catalog code, or gone when the peer left)."
    );
    describe_counter!(
        "larachat_gateway_ws_frames_received_total",
        Unit::Count,
        "Realtime frames received from clients."
    );
    describe_counter!(
        "larachat_gateway_ws_rate_limited_total",
        Unit::Count,
        "Realtime frames refused with rate_limited (per-connection frame budget exceeded)."
    );
    describe_counter!(
        "larachat_gateway_ws_events_sent_total",
        Unit::Count,
        "Live events sent to realtime connections."
    );
    describe_counter!(
        "larachat_gateway_ws_slow_consumers_total",
        Unit::Count,
        "Realtime connections closed because their outbound queue overflowed (4100)."
    );
    describe_counter!(
        "larachat_gateway_messages_received_total",
        Unit::Count,
        "Send requests received, by transport (http, realtime, widget), before validation."
    );
    describe_counter!(
        "larachat_gateway_messages_stored_total",
        Unit::Count,
        "Messages newly stored (idempotent retries not counted)."
    );
    describe_counter!(
        "larachat_gateway_publish_failures_total",
        Unit::Count,
        "Live publishes that failed after the message was stored (readers catch up by resume)."
    );
    describe_counter!(
        "larachat_gateway_bus_outages_total",
        Unit::Count,
        "Times the bus connection was lost (every realtime socket is then closed with 4102)."
    );
    describe_counter!(
        "larachat_widget_origin_refused_total",
        Unit::Count,
        "Widget API requests refused because their Origin is not in the project's allow-list."
    );
    describe_counter!(
        "larachat_widget_visitors_created_total",
        Unit::Count,
        "Anonymous widget visitors created by widget init."
    );
    describe_counter!(
        "larachat_widget_identity_failures_total",
        Unit::Count,
        "Widget inits whose identity verification (user_hash) failed."
    );
}
