// Type-checked against the client that scripts/openapi-check.sh generates from the running
// server's /openapi.json (generated/openapi.d.ts). It fails to compile when the document
// drifts from what SDK authors rely on: query parameters in the query, path parameters in
// the path, error bodies with the catalog shape, operations named once.
import type { components, operations, paths } from './generated/openapi';

type Schemas = components['schemas'];

// Listing conversations and messages: paging parameters are query parameters, never path ones.
const listConversations: operations['list_conversations']['parameters'] = {
  query: { status: 'open', limit: 50, cursor: undefined, user_id: undefined },
};
const listMessages: paths['/api/v1/conversations/{id}/messages']['get']['parameters'] = {
  path: { id: '0193a5e4-5b6c-7a2d-b1e0-9c8f7e6d5a43' },
  query: { before: undefined, after: undefined, limit: 20 },
};
const widgetHistory: operations['widget_list_messages']['parameters'] = {
  query: { key: 'pk_live_x', limit: 10 },
};

// Sending: the body is an object with text; the answers include the catalog errors.
const send: Schemas['SendMessage'] = { text: 'hello', client_msg_id: 'c-1' };
type SendResponses = operations['send_message']['responses'];
const sent = (r: SendResponses[201]['content']['application/json']): string => r.message.id;
const limited = (r: SendResponses[429]['content']['application/json']): Schemas['ErrorCode'] =>
  r.error.code;
const tooBig = (r: SendResponses[413]['content']['application/json']): boolean => r.error.retryable;
const wrongType = (r: SendResponses[415]['content']['application/json']): string => r.error.message;

// Agent tokens, and the Admin API's login with its 429.
const agentToken: Schemas['CreateAgentToken'] = { agent: { id: 'ana', name: 'Ana' }, scopes: ['read'] };
type LoginResponses = operations['login']['responses'];
const loginThrottled = (r: LoginResponses[429]['content']['application/json']): string => r.error.code;
const project: Schemas['UpdateProjectRequest'] = { name: 'renamed', status: 'suspended' };

export const used = [
  listConversations, listMessages, widgetHistory, send, sent, limited, tooBig, wrongType,
  agentToken, loginThrottled, project,
];
