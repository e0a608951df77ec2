-- hook run by the release tool
return function(ctx)
  ctx.log('release ' .. ctx.version)
end
