/** The API's fastify instance type, version and default address, shared by app.ts, the route files beside it and server.ts. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';

export type App = FastifyInstance<HttpsServer, IncomingMessage, ServerResponse, FastifyBaseLogger, TypeBoxTypeProvider>;

export const API_VERSION = '0.1.0';

/** Where `ferry server` listens unless told otherwise (`--listen`); also the OpenAPI document's default server. */
export const DEFAULT_LISTEN = '127.0.0.1:7440';
