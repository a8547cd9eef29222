-- Schema 9: usage metered at the edge (API requests, peak realtime connections). One row per
-- project, UTC hour and gateway process, holding that process's running values for the
-- hour; a flush keeps the larger of the stored and the new values, so writing a row again
-- changes nothing. The month's requests are the sum of its rows, its peak connections the
-- largest per-hour sum. `period` ('YYYY-MM') is the hour's month.
CREATE TABLE usage_edge (
    project_id       BLOB NOT NULL,
    period           TEXT NOT NULL,
    hour             INTEGER NOT NULL,
    process_id       BLOB NOT NULL,
    requests         INTEGER NOT NULL,
    peak_connections INTEGER NOT NULL,
    PRIMARY KEY (project_id, period, hour, process_id)
) WITHOUT ROWID;
