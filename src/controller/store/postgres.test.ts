import { after, before } from 'node:test';
import { startPostgres, type PostgresServer } from '../../testing/postgres.ts';
import { storeContract } from './contract.case.ts';

let pg: PostgresServer | undefined;
before(async () => {
  pg = await startPostgres();
});
after(() => pg?.stop());
let n = 0;
storeContract('PostgreSQL', {
  location: () => {
    if (pg === undefined) throw new Error('PostgreSQL did not start');
    return pg.createDatabase(`contract_${++n}`);
  },
});
