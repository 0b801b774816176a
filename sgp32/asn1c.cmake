# cmake -DASN1C=... -DFLAGS=... -DMODULES=... -DOUT=dir -P asn1c.cmake:
# regenerates the SGP.32 codec into OUT from scratch (sgp32/CMakeLists.txt).
file(REMOVE_RECURSE ${OUT})
file(MAKE_DIRECTORY ${OUT})
execute_process(COMMAND ${ASN1C} ${FLAGS} ${MODULES} WORKING_DIRECTORY ${OUT}
                RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "asn1c failed: ${err}")
endif()
file(REMOVE ${OUT}/converter-sample.c ${OUT}/Makefile.am.sample)
