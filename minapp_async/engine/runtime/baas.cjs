'use strict'
// The `BaaS` global of MinApp cloud functions, written by us from the platform's documentation
// (cloud-function/node-sdk/*). It never touches the network: every call becomes
// `call(op, payload)`, a Promise of the engine's answer, which the worker carries over its
// private channel to `_baas_ops.BaasOps.handle`. Answers are `{status, data}` or
// `{error: {code, message}}`; the latter rejects with an HError, as the platform's SDK does.
//
// Usage (in the worker): `global.BaaS = createBaaS(call)`.

const STATUS_TEXT = { 200: 'OK', 201: 'Created', 202: 'Accepted', 204: 'No Content' }
const COMPARE = { '=': '$eq', '!=': '$ne', '<': '$lt', '<=': '$lte', '>': '$gt', '>=': '$gte' }

class HError extends Error {
  // `message` reads "<code>: <text>", as the platform's JS SDK words its HErrors.
  constructor (code, text) {
    super(code + ': ' + text)
    this.name = 'HError'
    this.code = code
  }

  toJSON () { return { code: this.code, message: this.message } }
}

function invalid (text) { return new HError(605, 'invalid argument: ' + text) }

function notSupported (name) {
  const err = new Error('not supported by the local engine: ' + name)
  err.name = 'NotSupportedError'
  err.code = 'ENOTSUPPORTED'
  return err
}

// A stand-in for an API the engine lacks: reading it is fine (feature checks), calling or
// constructing it — or anything reached through it — throws a clear error.
function unsupported (name) {
  const stub = function () {}
  return new Proxy(stub, {
    apply () { throw notSupported(name) },
    construct () { throw notSupported(name) },
    get (target, prop) {
      if (typeof prop === 'symbol' || prop === 'then' || prop === 'toJSON') return undefined
      if (prop === 'name') return name
      return unsupported(name + '.' + prop)
    }
  })
}

// An object whose unknown members are `unsupported(prefix.member)` stubs.
function withStubs (target, prefix) {
  return new Proxy(target, {
    get (obj, prop, receiver) {
      if (typeof prop === 'symbol' || prop in obj) return Reflect.get(obj, prop, receiver)
      if (prop === 'then' || prop === 'toJSON' || prop === 'inspect') return undefined
      return unsupported(prefix + '.' + prop)
    }
  })
}

function parseVersion (v) {
  const m = typeof v === 'string' && /^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?$/.exec(v.trim())
  if (!m) throw invalid('useVersion takes a version like "v3.2", not ' + JSON.stringify(v))
  return [Number(m[1]), Number(m[2] || 0), Number(m[3] || 0)]
}

function older (a, b) {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] < b[i]
  return false
}

function checkKey (key, what) {
  if (typeof key !== 'string' || key === '') throw invalid((what || 'field name') + ' must be a non-empty string')
  return key
}

function isPlainObject (v) {
  if (v === null || typeof v !== 'object') return false
  const proto = Object.getPrototypeOf(v)
  return proto === Object.prototype || proto === null
}

function createBaaS (call) {
  if (typeof call !== 'function') throw new TypeError('createBaaS(call) needs a call(op, payload) function')
  let version = [2, 0, 0] // the documented default: v2
  const withCountDefault = () => older(version, [3, 2, 0]) // v3.2 made withCount opt-in

  async function rpc (op, payload) {
    const answer = await call(op, payload)
    if (answer === null || typeof answer !== 'object') throw new HError(500, 'no answer from the engine for ' + op)
    if (answer.error) throw new HError(answer.error.code || 500, answer.error.message || 'unknown error')
    return answer
  }

  function response (answer) {
    const status = answer.status
    return { status, statusText: STATUS_TEXT[status] || '', headers: {}, data: answer.data }
  }

  // -- values sent to the engine ------------------------------------------------------------

  // In a record: a TableRecord becomes a pointer, geo shapes GeoJSON, dates ISO strings.
  function toValue (v) {
    if (v instanceof TableRecord) return v._pointer()
    if (v instanceof GeoPoint || v instanceof GeoPolygon) return v.toGeoJSON()
    if (v instanceof Date) return v.toISOString()
    if (Array.isArray(v)) return v.map(toValue)
    if (isPlainObject(v)) {
      const out = {}
      for (const k of Object.keys(v)) out[k] = toValue(v[k])
      return out
    }
    return v
  }

  // In a query: a pointer compares by its target's id.
  function toQueryValue (v) {
    if (v instanceof TableRecord) return v._pointer().id
    if (Array.isArray(v)) return v.map(toQueryValue)
    return toValue(v)
  }

  // -- geo ------------------------------------------------------------------------------------

  class GeoPoint {
    constructor (longitude, latitude) {
      if (typeof longitude !== 'number' || typeof latitude !== 'number') throw invalid('GeoPoint takes (longitude, latitude) numbers')
      this.longitude = longitude
      this.latitude = latitude
    }

    toGeoJSON () { return { type: 'Point', coordinates: [this.longitude, this.latitude] } }
  }

  class GeoPolygon {
    constructor (points) {
      if (!Array.isArray(points) || points.length < 3) throw invalid('GeoPolygon takes at least 3 points')
      this.points = points.map(p => {
        if (p instanceof GeoPoint) return [p.longitude, p.latitude]
        if (Array.isArray(p) && p.length === 2) return p.slice()
        throw invalid('a GeoPolygon point is a GeoPoint or [longitude, latitude]')
      })
    }

    toGeoJSON () {
      const ring = this.points.slice()
      const [a, z] = [ring[0], ring[ring.length - 1]]
      if (a[0] !== z[0] || a[1] !== z[1]) ring.push(a) // a polygon's ring is closed
      return { type: 'Polygon', coordinates: [ring] }
    }
  }

  // -- Query ----------------------------------------------------------------------------------

  class Query {
    constructor () { this._conds = [] }

    _add (key, cond) {
      checkKey(key)
      this._conds.push({ [key]: cond })
      return this
    }

    _where () {
      if (this._conds.length === 0) return {}
      if (this._conds.length === 1) return this._conds[0]
      return { $and: this._conds.slice() }
    }

    compare (key, operator, value) {
      const op = COMPARE[operator]
      if (!op) throw invalid('compare operator must be one of ' + Object.keys(COMPARE).join(' '))
      return this._add(key, { [op]: toQueryValue(value) })
    }

    contains (key, str) {
      if (typeof str !== 'string') throw invalid('contains takes a string')
      return this._add(key, { $contains: str })
    }

    matches (key, regExp) {
      if (!(regExp instanceof RegExp)) throw invalid('matches takes a RegExp')
      return this._add(key, { $regex: regExp.source, $options: regExp.flags })
    }

    in (key, arr) {
      if (!Array.isArray(arr)) throw invalid('in takes an array')
      return this._add(key, { $in: toQueryValue(arr) })
    }

    notIn (key, arr) {
      if (!Array.isArray(arr)) throw invalid('notIn takes an array')
      return this._add(key, { $nin: toQueryValue(arr) })
    }

    arrayContains (key, arr) {
      if (!Array.isArray(arr)) throw invalid('arrayContains takes an array')
      return this._add(key, { $all: toQueryValue(arr) })
    }

    _each (keys, cond) {
      for (const key of Array.isArray(keys) ? keys : [keys]) this._add(key, cond)
      return this
    }

    isNull (keys) { return this._each(keys, { $isnull: true }) }
    isNotNull (keys) { return this._each(keys, { $isnull: false }) }
    exists (keys) { return this._each(keys, { $exists: true }) }
    notExists (keys) { return this._each(keys, { $exists: false }) }

    hasKey (key, name) {
      checkKey(name, 'hasKey key')
      return this._add(key, { $has_key: name })
    }

    // The geo operators are sent as documented; the local engine answers them with a 400.
    include (key, point) { return this._add(key, { $intersects: toValue(point) }) }
    within (key, polygon) { return this._add(key, { $within: toValue(polygon) }) }
    withinCircle (key, point, radius) {
      return this._add(key, { $center: { radius, coordinates: toValue(point).coordinates } })
    }

    withinRegion (key, point, maxDistance, minDistance = 0) {
      return this._add(key, { $nearsphere: { geometry: toValue(point), min_distance: minDistance, max_distance: maxDistance } })
    }

    static and (...queries) { return combine('$and', queries) }
    static or (...queries) { return combine('$or', queries) }
  }

  function combine (op, queries) {
    if (queries.length === 0 || !queries.every(q => q instanceof Query)) throw invalid('Query.and/or take Query objects')
    const q = new Query()
    q._conds.push({ [op]: queries.map(x => x._where()) })
    return q
  }

  // -- TableObject / TableRecord -------------------------------------------------------------

  class TableObject {
    constructor (tableNameOrId) {
      if (!(typeof tableNameOrId === 'string' && tableNameOrId !== '') && !Number.isInteger(tableNameOrId)) {
        throw invalid('TableObject takes a table name or an integer table id')
      }
      this._table = tableNameOrId
      this._resetQuery()
    }

    _resetQuery () {
      this._q = { where: {}, limit: null, offset: null, order_by: null, select: null, expand: null }
    }

    // Query settings last until the next find/count/get/bulk operation uses them.
    _takeQuery () {
      const q = this._q
      this._resetQuery()
      return q
    }

    setQuery (query) {
      if (!(query instanceof Query)) throw invalid('setQuery takes a BaaS.Query')
      this._q.where = query._where()
      return this
    }

    limit (n) {
      if (!Number.isInteger(n) || n < 0) throw invalid('limit takes a non-negative integer')
      this._q.limit = n
      return this
    }

    offset (n) {
      if (!Number.isInteger(n) || n < 0) throw invalid('offset takes a non-negative integer')
      this._q.offset = n
      return this
    }

    _keys (keys, what) {
      const list = Array.isArray(keys) ? keys : [keys]
      list.forEach(k => checkKey(k, what + ' field'))
      return list
    }

    orderBy (keys) { this._q.order_by = this._keys(keys, 'orderBy'); return this }
    select (keys) { this._q.select = this._keys(keys, 'select'); return this }
    expand (keys) { this._q.expand = this._keys(keys, 'expand'); return this }

    async find ({ withCount = withCountDefault() } = {}) {
      const q = this._takeQuery()
      return response(await rpc('table.find', { table: this._table, ...q, with_count: Boolean(withCount) }))
    }

    async count () {
      const q = this._takeQuery()
      return (await rpc('table.count', { table: this._table, where: q.where })).data
    }

    async get (recordID) {
      if (!(typeof recordID === 'string' || Number.isInteger(recordID))) throw invalid('get takes a record id')
      const q = this._takeQuery()
      return response(await rpc('table.get', { table: this._table, id: recordID, select: q.select, expand: q.expand }))
    }

    create () { return new TableRecord(this, null) }

    async createMany (items, { enableTrigger = true } = {}) {
      if (!Array.isArray(items)) throw invalid('createMany takes an array of objects')
      return response(await rpc('table.create_many', {
        table: this._table, items: items.map(toValue), enable_trigger: Boolean(enableTrigger)
      }))
    }

    getWithoutData (idOrQuery) {
      if (idOrQuery instanceof Query) {
        const q = this._takeQuery()
        return new TableRecord(this, { where: idOrQuery._where(), limit: q.limit, offset: q.offset, order_by: q.order_by })
      }
      if (typeof idOrQuery === 'string' || Number.isInteger(idOrQuery)) return new TableRecord(this, { id: idOrQuery })
      throw invalid('getWithoutData takes a record id or a BaaS.Query')
    }

    async delete (idOrQuery, { enableTrigger = true, withCount = withCountDefault() } = {}) {
      if (idOrQuery instanceof Query) {
        const q = this._takeQuery()
        return response(await rpc('table.delete_many', {
          table: this._table,
          where: idOrQuery._where(),
          limit: q.limit,
          offset: q.offset,
          order_by: q.order_by,
          enable_trigger: Boolean(enableTrigger),
          with_count: Boolean(withCount)
        }))
      }
      if (!(typeof idOrQuery === 'string' || Number.isInteger(idOrQuery))) throw invalid('delete takes a record id or a BaaS.Query')
      const answer = await rpc('table.delete', { table: this._table, id: idOrQuery, enable_trigger: Boolean(enableTrigger) })
      return { status: answer.status, statusText: 'No Content', headers: {}, data: '' }
    }
  }

  class TableRecord {
    constructor (table, target) {
      this._tableObject = table
      this._target = target // null: a new record; {id}; or {where, limit, offset}
      this._record = {}
      this._kinds = {}
    }

    _pointer () {
      if (!this._target || this._target.id === undefined) throw invalid('only getWithoutData(id) makes a pointer')
      return { id: this._target.id, _table: this._tableObject._table }
    }

    _op (key, kind, value) {
      checkKey(key)
      const before = this._kinds[key]
      if ((kind === 'unset' && before && before !== 'unset') || (before === 'unset' && kind !== 'unset')) {
        throw invalid('cannot both set and unset field ' + JSON.stringify(key))
      }
      this._kinds[key] = kind
      this._record[key] = value // of several ops on one field only the last counts
      return this
    }

    set (key, value) {
      if (isPlainObject(key)) {
        for (const k of Object.keys(key)) this._op(k, 'set', toValue(key[k]))
        return this
      }
      if (arguments.length < 2) throw invalid('set takes (key, value) or an object')
      return this._op(key, 'set', toValue(value))
    }

    unset (key) {
      if (isPlainObject(key)) {
        for (const k of Object.keys(key)) this._op(k, 'unset', { $unset: '' })
        return this
      }
      return this._op(key, 'unset', { $unset: '' })
    }

    incrementBy (key, value) {
      if (typeof value !== 'number' || !Number.isFinite(value)) throw invalid('incrementBy takes a number')
      return this._op(key, 'incr', { $incr_by: value })
    }

    append (key, value) { return this._op(key, 'append', { $append: listOf(value) }) }
    uAppend (key, value) { return this._op(key, 'uAppend', { $append_unique: listOf(value) }) }
    remove (key, value) { return this._op(key, 'remove', { $remove: listOf(value) }) }
    pop (key) { return this._op(key, 'pop', { $pop: 1 }) }
    shift (key) { return this._op(key, 'shift', { $shift: 1 }) }

    patchObject (key, value) {
      if (!isPlainObject(value)) throw invalid('patchObject takes a plain object')
      return this._op(key, 'patch', { $update: toValue(value) })
    }

    async save () {
      if (this._target !== null) throw invalid('save() is for records made with create(); use update()')
      const answer = await rpc('table.create', { table: this._tableObject._table, data: this._record })
      return response(this._tableObject instanceof User ? { ...answer, status: 200 } : answer)
    }

    async update ({ enableTrigger = true, withCount = withCountDefault() } = {}) {
      const t = this._target
      if (t === null) throw invalid('update() is for records from getWithoutData(); use save()')
      const table = this._tableObject._table
      if (t.id !== undefined) {
        return response(await rpc('table.update', {
          table, id: t.id, update: this._record, enable_trigger: Boolean(enableTrigger)
        }))
      }
      return response(await rpc('table.update_many', {
        table,
        where: t.where,
        update: this._record,
        limit: t.limit,
        offset: t.offset,
        order_by: t.order_by,
        enable_trigger: Boolean(enableTrigger),
        with_count: Boolean(withCount)
      }))
    }
  }

  function listOf (value) { return (Array.isArray(value) ? value : [value]).map(toValue) }

  // -- users (_userprofile) --------------------------------------------------------------------

  class User extends TableObject {
    constructor () { super('_userprofile') }
  }
  User.prototype.setAccount = unsupported('BaaS.User#setAccount')

  // -- TableSchema ---------------------------------------------------------------------------

  class TableSchema {
    async createSchema (schemaInfo) {
      if (!isPlainObject(schemaInfo)) throw invalid('createSchema takes an object')
      return response(await rpc('schema.create', schemaInfo))
    }

    async getSchema (schemaID) { return response(await rpc('schema.get', { id: schemaID })) }

    async getSchemaList ({ limit = null, offset = null } = {}) {
      return response(await rpc('schema.list', { limit, offset }))
    }

    async updateSchema (schemaID, schemaInfo) {
      if (!isPlainObject(schemaInfo)) throw invalid('updateSchema takes (id, object)')
      return response(await rpc('schema.update', { ...schemaInfo, id: schemaID }))
    }

    async deleteSchema (schemaID) {
      const answer = await rpc('schema.delete', { id: schemaID })
      return { status: answer.status, statusText: 'No Content', headers: {}, data: '' }
    }
  }

  // -- functions, messages, services --------------------------------------------------------

  async function invoke (name, params, sync = true) {
    checkKey(name, 'function name')
    const answer = await rpc('function.invoke', { name, params: params === undefined ? null : params, sync: sync !== false })
    return answer.data // the callee's {code, data, error}; a non-zero code does not reject
  }

  async function invokeFunction (name, params, sync = true) {
    checkKey(name, 'function name')
    const answer = await rpc('function.invoke', { name, params: params === undefined ? null : params, sync: sync !== false })
    return response(answer) // deprecated form: the envelope is res.data
  }

  function sender (kind) {
    return async function (data) {
      if (!isPlainObject(data)) throw invalid('a message takes an object of parameters')
      return response(await rpc('message.send', { kind, data: toValue(data) }))
    }
  }

  function platform (name, members) { return withStubs(members, 'BaaS.' + name) }

  const BaaS = {
    TableObject,
    TableRecord,
    Query,
    User,
    TableSchema,
    GeoPoint,
    GeoPolygon,
    invoke,
    invokeFunction,
    useVersion (v) {
      const wanted = parseVersion(v)
      if (older(version, wanted)) version = wanted // upgrade only; a downgrade keeps the newer one
    },
    get VERSION () { return version.join('.') },
    sendTemplateMessage: sender('wechat.template_message'),
    sendEmail: sender('email'),
    sendSmsMessage: sender('sms_message'),
    async sendSmsCode (params) {
      if (!isPlainObject(params)) throw invalid('sendSmsCode takes {phone}')
      return response(await rpc('sms.send_code', params))
    },
    async verifySmsCode (params) {
      if (!isPlainObject(params)) throw invalid('verifySmsCode takes {phone, code}')
      return response(await rpc('sms.verify_code', params))
    },
    async wxAccessToken () {
      // The docs leave open whether the token is bare or under .data: offer both readings.
      const res = response(await rpc('wechat.access_token', {}))
      return { ...res, ...res.data }
    },
    async getServerDate () { return response(await rpc('server.date', {})) },
    wechat: platform('wechat', { sendSubscribeMessage: sender('wechat.subscribe_message') }),
    alipay: platform('alipay', { sendTemplateMessage: sender('alipay.template_message') }),
    qq: platform('qq', {
      sendTemplateMessage: sender('qq.template_message'),
      sendSubscribeMessage: sender('qq.subscribe_message')
    }),
    baidu: platform('baidu', { sendTemplateMessage: sender('baidu.template_message') }),
    bytedance: platform('bytedance', { sendTemplateMessage: sender('bytedance.template_message') })
  }
  return withStubs(BaaS, 'BaaS')
}

module.exports = { createBaaS, HError }
