-- Schema 7: storage metered per project and month: bytes of message content added (UTF-8
-- length of the text plus the serialized metadata), counted with the message in the same
-- write. Months counted before this migration start at 0 bytes.
ALTER TABLE usage ADD COLUMN storage_bytes INTEGER NOT NULL DEFAULT 0;
