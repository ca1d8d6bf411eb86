// ES module entry of the kr-serve package (the implementation is index.js).
import cjs from './index.js'

export const { createEngine, Engine } = cjs
export default cjs
