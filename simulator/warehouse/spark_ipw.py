"""The Spark SQL query of simulator/README.md ("In a warehouse"), run with
pyspark in local mode on a `nudge-sim export` dataset and a target table,
so the query the README shows for billions of rows is one that ran.

    python3 -m venv /work/venv-spark && /work/venv-spark/bin/pip install pyspark
    /work/venv-spark/bin/python simulator/warehouse/spark_ipw.py EXPORT_DIR TARGET.csv \\
        POLICY AS_OF          # AS_OF like 2026-12-04 12:00:00 UTC

It needs a Java runtime (17 here). Prints n, IPW and SNIPW as JSON, to
compare with `duckdb_ipw.py` / `nudge-sim evaluate` on the same files.
"""

import json
import os
import sys

from pyspark.sql import SparkSession

export, target, policy, as_of = sys.argv[1:5]
query = open(os.path.join(os.path.dirname(__file__), "ipw_spark.sql")).read()
query = query.replace("TIMESTAMP '2026-12-04 12:00:00 UTC'", f"TIMESTAMP '{as_of}'")
query = query.replace("policy = 'push_send'", f"policy = '{policy}'")
query = query.replace("date >= DATE '2026-11-01'", "true")
spark = (
    SparkSession.builder.master("local[2]")
    .config("spark.ui.enabled", "false")
    .config("spark.sql.session.timeZone", "UTC")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
spark.read.parquet(export).createOrReplaceTempView("nudge_log")
(
    spark.read.option("header", True)
    .schema("event_id STRING, action STRING, probability DOUBLE")
    .csv(target)
    .createOrReplaceTempView("target")
)
row = spark.sql(query).collect()[0]
print(json.dumps({"n": row["n"], "ipw": row["ipw"], "snipw": row["snipw"]}))
spark.stop()
