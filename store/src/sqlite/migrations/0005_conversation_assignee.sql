-- Version 5: conversations can be assigned to an agent.
--
-- `assignee` is the tenant's agent identifier (the `id` of an `agent` actor), NULL when
-- unassigned; every existing conversation starts unassigned. The index serves the listing
-- filters `?assignee=<agent>` and `?assignee=none` (`assignee IS NULL`) newest first within
-- the project, without scanning the project's other conversations.

ALTER TABLE conversations ADD COLUMN assignee TEXT;

CREATE INDEX conversations_by_assignee ON conversations (project_id, assignee, id);
