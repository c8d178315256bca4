-- Orthanc: send every CT series to the PENGWIN node once it is stable (no new instance
-- for StableAge seconds), as an asynchronous store job (retried from Orthanc's Jobs page
-- if the node is down). The node's results (Modality SEG and M3D) are not routed back.
-- orthanc.json: "LuaScripts": ["/etc/orthanc/pengwin-route.lua"] and a DicomModalities
-- entry named "pengwin" (see docs/watcher.md).
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'CT' then
    RestApiPost('/modalities/pengwin/store',
                '{"Resources": ["' .. seriesId .. '"], "Asynchronous": true}')
  end
end
